"""Export and import of an organization as NDJSON (engine.sessions.export, docs/export.schema.json):
the one sequence that drives the shards' export cursors out and an import's ops in, shared by the
gateway's routes (api/routes/transfer.py) and the operator's commands (session_engine/transfer.py).
It reaches the shards through `Routes`, so it imports neither FastAPI nor Ray.
"""
