"""Benchmarks for session-engine: load a real server over HTTP on 127.0.0.1 and report numbers."""
