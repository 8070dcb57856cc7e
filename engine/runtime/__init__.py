"""Hosting the core in Ray actors: the only part of `engine/` that imports Ray.

The control plane: `controller` (the cluster's controller actor), `operators` (what the operator
commands do), `ray_cluster` (connecting to Ray), `watch` (a gateway's watch on Ray). The data
path: `transports` (how a gateway reaches the shards) to the actors, `session_shards`,
`memory_shards` and `model_actors`; the shards share `hosted`, `upkeep` and `shard_metrics`, and a
session shard reaches memory and the models through `closing_ports`. `ray_actors` creates and
finds actors by the names in `names`."""
