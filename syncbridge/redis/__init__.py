"""The Redis backend: the only package that imports the Redis client (coredis)."""
