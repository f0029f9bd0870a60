"""SyncBridge: real-time session state over WebSockets, wire-compatible with HarmonyFlow v1."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
