"""Keep one session in sync and print what happens to it.

    python examples/sync_client.py ws://localhost:8080/ws "$TOKEN" [CHANGES]

Stops after CHANGES changes (default: never); stop the server, restart it, and
watch the client reconnect and catch up.
"""

from __future__ import annotations

import sys

import trio

from syncbridge.client import (
    Change,
    Conflict,
    ConnectionLost,
    Reconnected,
    Resynced,
    open_sync_client,
)


async def main(url: str, token: str, changes: float) -> None:
    async with open_sync_client(url, token=token) as client:
        print(f"synced at version {client.version}: {dict(client.state)}", flush=True)
        version = await client.set("greeting", "hello")  # returns once acknowledged
        print(f"greeting acknowledged at version {version}", flush=True)
        seen = 0
        async for event in client.events():
            match event:
                case Change():
                    print(f"{event.key} = {event.value!r} (version {event.version})", flush=True)
                    seen += 1
                case Resynced():
                    print(f"resynced ({event.reason}) at version {event.version}", flush=True)
                case Conflict():
                    print(f"not sent, {event.key} changed meanwhile: {event.server_value!r}")
                case ConnectionLost():
                    print(f"connection lost ({event.code}); reconnecting", flush=True)
                case Reconnected():
                    print(f"reconnected at version {event.version}", flush=True)
            if seen >= changes:
                break
        # client.state is the server's state at client.version, always.
        print(f"final version {client.version}: {dict(client.state)}", flush=True)


if __name__ == "__main__":
    limit = float(sys.argv[3]) if len(sys.argv) > 3 else float("inf")
    trio.run(main, sys.argv[1], sys.argv[2], limit)
