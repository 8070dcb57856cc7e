"""Hosting the core in processes. `ray_host` is the only module that imports Ray."""
