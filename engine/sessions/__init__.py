"""Sessions: the per-session actor state, the operations on it, and the shard store hosting many."""
