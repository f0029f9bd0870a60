"""What every /v1 route needs: the service, the state writer, settings and budgets."""

from __future__ import annotations

import attrs
import trio
from starlette.requests import Request

from syncbridge.http.api.access import Caller, authenticate, unauthorized
from syncbridge.http.api.problem import Problem
from syncbridge.http.api.ratelimit import WriteBudget
from syncbridge.metrics import Metrics
from syncbridge.service import SessionService
from syncbridge.settings import Settings
from syncbridge.state_writer import StateWriter
from syncbridge.store.base import Origin

__all__ = ["ApiContext"]


@attrs.define(kw_only=True)
class ApiContext:
    """Shared by the routes of one app (one process)."""

    service: SessionService
    writer: StateWriter
    settings: Settings
    budget: WriteBudget

    @classmethod
    def create(cls, service: SessionService, settings: Settings) -> ApiContext:
        """The context over ``service``: HTTP writes share its store, broker and locks."""
        writer = StateWriter(
            store=service.store,
            broker=service.broker,
            locks=service.locks,
            now=service.now,
            metrics=service.metrics,
        )
        budget = WriteBudget(rate=settings.http_rate_limit, burst=settings.http_rate_burst)
        return cls(service=service, writer=writer, settings=settings, budget=budget)

    @property
    def metrics(self) -> Metrics:
        return self.service.metrics

    async def caller(self, request: Request) -> Caller:
        """The verified, unrevoked caller of ``request`` (401 otherwise)."""
        caller = authenticate(
            request, self.service.authority, now=self.service.clock(), metrics=self.metrics
        )
        if await self.service.is_revoked(caller.claims):
            self.metrics.auth_failures.labels(reason="revoked").inc()
            raise unauthorized("token is revoked")
        return caller

    def charge_write(self, caller: Caller) -> None:
        """Count one write against the caller's token budget (429 when spent)."""
        wait = self.budget.take(caller.budget_key, trio.current_time())
        if wait is not None:
            self.metrics.count_refusal("http_rate_limit")
            raise Problem(
                429,
                "RATE_LIMITED",
                f"more than {self.settings.http_rate_limit:g} writes per second with this "
                "token (HTTP_RATE_LIMIT); retry later",
                headers={"retry-after": WriteBudget.retry_after(wait)},
            )

    @staticmethod
    def origin(caller: Caller) -> Origin:
        """An HTTP write's origin: the token's identity, no connection to skip."""
        return Origin(caller.claims.user_id, caller.claims.device_id, None)
