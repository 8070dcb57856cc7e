"""Durability: framed records, the write-ahead log, snapshots, and the directory lock.

Pure file I/O; nothing here imports Ray or FastAPI.
"""
