"""What every kind of durable shard shares: framed records, the write-ahead log, snapshot files'
parts, the directory lock, identity and epoch, recovery, and the write path (LoggedStore). It
knows no kind of shard: each kind's codec, snapshot format and durable wrapper live beside its
store (engine.sessions, engine.memory).

Pure file I/O; nothing here imports Ray or FastAPI.
"""
