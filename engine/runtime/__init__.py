"""Hosting the core in Ray actors. `session_shards`, `memory_shards`, `model_actors`, `ray_cluster`,
`ray_actors` and `hosted` are the only modules that import Ray."""
