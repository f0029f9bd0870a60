"""SyncBridge's WebSocket engine for ``/ws``: routing, handshake and sockets on trio,
with websockets' sans-IO protocol doing the framing (decision 0011)."""
