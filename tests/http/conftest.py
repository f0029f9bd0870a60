"""``store``: each HTTP API test once on memory and once on a private redis-server."""

from __future__ import annotations

from ..e2e_redis.conftest import StoreUnderTest, store

__all__ = ["StoreUnderTest", "store"]
