"""examples/test_with_syncbridge.py passes as an application team runs it: its own pytest
run in a directory of its own, the plugin loaded by its entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import trio

from syncbridge.testing import plugin

from ..redis_harness import RedisServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "test_with_syncbridge.py"
RUN_BOUND = 120.0


async def _run_example(directory: Path, *args: str) -> str:
    """Run the example with pytest in ``directory`` (an empty project); return its output."""
    shutil.copy(EXAMPLE, directory / EXAMPLE.name)
    (directory / "pytest.ini").write_text("[pytest]\n")  # not our pyproject's settings
    with trio.fail_after(RUN_BOUND):
        result = await trio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=directory,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output
    return output


async def test_example_passes_on_the_memory_store(tmp_path: Path) -> None:
    output = await _run_example(tmp_path)
    assert "4 passed" in output


async def test_example_passes_on_redis_given_by_option(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    assert (await redis_server.cli("DBSIZE")).strip() == "0"
    output = await _run_example(
        tmp_path, "--syncbridge-redis-url", redis_server.url, "-k", "not mock_clock"
    )
    assert "3 passed" in output
    # The servers really used this Redis: the sessions' state is in it.
    assert int((await redis_server.cli("DBSIZE")).strip()) > 0


async def test_testing_package_imports_without_pytest() -> None:
    code = "import sys; sys.modules['pytest'] = None; import syncbridge.testing"
    with trio.fail_after(RUN_BOUND):
        result = await trio.run_process(
            [sys.executable, "-c", code], capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()


def test_example_is_shown_verbatim_in_the_docs() -> None:
    docs = (ROOT / "docs" / "testing.md").read_text()
    assert "```python\n" + EXAMPLE.read_text() + "```" in docs


def test_every_plugin_fixture_is_documented() -> None:
    docs = (ROOT / "docs" / "testing.md").read_text()
    fixtures = [name for name in plugin.__all__ if name.startswith("syncbridge_")]
    assert len(fixtures) == 10
    missing = [name for name in fixtures if f"| `{name}`" not in docs]
    assert not missing
