"""``store``: run an end-to-end test once on the memory store and once on a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from syncbridge.settings import Settings

from ..conftest import make_settings
from ..redis_harness import RedisServer, open_redis_server
from . import redis_settings


@attrs.frozen
class StoreUnderTest:
    """How to configure a server on one of the two stores."""

    redis: RedisServer | None

    @property
    def kind(self) -> str:
        return "memory" if self.redis is None else "redis"

    def settings(self, **overrides: Any) -> Settings:
        if self.redis is None:
            return make_settings(**overrides)
        return redis_settings(self.redis.url, **overrides)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    if request.param == "memory":
        yield StoreUnderTest(None)
    else:
        async with open_redis_server(tmp_path / "redis") as redis:
            yield StoreUnderTest(redis)
