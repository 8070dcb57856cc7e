"""Sessions: the per-session state, the operations on it, the shard store hosting many, and its
codec, snapshots, change feed and durability."""
