"""The OpenAPI document is true to the code: same routes, and a property-based run
(schemathesis) against a live server finds no 5xx and only documented answers."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
import trio
from starlette.routing import Route

from syncbridge.http.api.openapi import OPERATIONS
from syncbridge.http.api.routes import routes

from ..conftest import start_server
from ..e2e_redis.conftest import StoreUnderTest
from . import http_client, service_token

BOUND = 240  # seconds for the whole property-based run
EXAMPLES = 30  # per operation

#: Every default check runs except this one: JSON Schema cannot say "printable
#: characters" (ids) or "no lone surrogates" (which no JSON parser we use takes),
#: so some schema-valid inputs get the documented 400/422 instead of a 2xx.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


def test_openapi_operations_are_the_routes() -> None:
    served = {
        (route.path, method.lower())
        for route in routes()
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert served == set(OPERATIONS)


async def test_openapi_is_served_without_a_token(server: Any) -> None:
    with trio.fail_after(10):
        async with http_client(server) as http:
            response = await http.get("/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert "/v1/sessions/{sid}/state" in document["paths"]


def _run_schemathesis(base_url: str, token: str) -> list[str]:
    """Every operation, EXAMPLES generated cases each, all default checks."""
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        # Schema-valid cases and, as many, cases that break the schema on purpose.
        @hypothesis.given(
            case=operation.as_strategy()
            | operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=base_url,
                headers={"Authorization": f"Bearer {token}"},
                excluded_checks=EXCLUDED,
            )

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # collect all, then report
            failures.append(f"{operation.label}: {exc}")
    return failures


@pytest.mark.slow
async def test_openapi_property_based_run_against_a_live_server(store: StoreUnderTest) -> None:
    settings = store.settings(http_rate_limit=10_000.0, http_rate_burst=10_000)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, settings)
        with trio.fail_after(BOUND):
            failures = await trio.to_thread.run_sync(
                _run_schemathesis, server.http, service_token()
            )
        server.stop.set()
    assert not failures, "\n\n".join(failures)
