"""The `session-engine` command: the composition root over `engine/` and `api/`."""
