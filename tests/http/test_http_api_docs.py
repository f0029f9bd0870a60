"""docs/http-api.md's curl examples, run one by one against a live server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import trio

from ..conftest import RunningServer, mint
from ..test_runbook import runbook_check
from . import service_token

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"

#: What each example's output must contain, in document order (subsets of its JSON).
EXPECTED: list[dict[str, Any]] = [
    {"session_id": "demo", "version": 0, "state": {}},
    {"version": 1, "state": {"theme": "dark", "volume": 3}},
    {"status": 409, "code": "VERSION_CONFLICT", "current_version": 1},
    {"version": 2, "state": {"theme": "dark", "volume": 4}},
    {"status": 409, "code": "PATCH_TEST_FAILED"},
]


def contains(whole: Any, part: Any) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            k in whole and contains(whole[k], v) for k, v in part.items()
        )
    return bool(whole == part)


async def test_http_api_doc_examples_work_against_a_live_server(server: RunningServer) -> None:
    commands = runbook_check.extract_commands(DOC.read_text())
    assert len(commands) == len(EXPECTED), "docs/http-api.md examples and EXPECTED differ"
    env = {
        **os.environ,
        "BASE": server.http,
        "DEVICE": mint(user="alice", device="laptop", session="demo"),
        "SERVICE": service_token(),
    }
    for command, expected in zip(commands, EXPECTED, strict=True):
        with trio.fail_after(15):
            result = await trio.run_process(
                ["bash", "-c", command.text], capture_stdout=True, env=env, check=False
            )
        assert result.returncode == 0, command.text
        output = orjson.loads(result.stdout)
        assert contains(output, expected), f"line {command.line}: {output}"
