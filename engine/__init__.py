"""session-engine core: sessions as virtual actors, their shard store, config and errors.

Nothing under `engine/` imports FastAPI; only `engine/runtime/` imports Ray.
"""

__version__ = "0.1.0"
