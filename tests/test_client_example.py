"""docs/client.md's runnable example runs against a real server and is the file it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from syncbridge.client import open_client

from .conftest import SECRET, mint
from .process.proc import LineReader, child_env, run_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sync_client.py"


def test_client_docs_show_the_example_file_verbatim() -> None:
    docs = (ROOT / "docs" / "client.md").read_text()
    assert "```python\n" + EXAMPLE.read_text() + "```" in docs


async def test_client_example_runs_against_a_server() -> None:
    with trio.fail_after(30):
        async with run_server(env={"JWT_SECRET": SECRET}) as server:
            process = await trio.lowlevel.open_process(
                [sys.executable, str(EXAMPLE), server.ws_url, mint(), "2"],
                stdout=subprocess.PIPE,
                env=child_env(),
            )
            assert process.stdout is not None
            lines = LineReader(process.stdout)
            assert await lines.readline() == "synced at version 0: {}"
            assert await lines.readline() == "greeting acknowledged at version 1"
            assert await lines.readline() == "greeting = 'hello' (version 1)"
            async with open_client(server.ws_url, token=mint(device="d2")) as other:
                await other.update("theme", "dark")
            assert await lines.readline() == "theme = 'dark' (version 2)"
            final = await lines.readline()
            assert final == "final version 2: {'greeting': 'hello', 'theme': 'dark'}"
            assert await process.wait() == 0
            await process.stdout.aclose()
