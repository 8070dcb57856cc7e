"""The HTTP gateway: validates requests, authenticates, routes ops to shards and maps results.

No business rules here; those live in `engine/`.
"""
