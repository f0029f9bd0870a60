"""Rate limits that are shared: per device across its sockets, per client address.

A limit per socket alone is no limit: 20 sockets of one token would get 20 times
the message rate, and a client opening sockets as fast as it can needs no token
at all. Both tables are bounded, so that the limiter itself cannot be made to
grow without end.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

import attrs

from syncbridge.protocol.session import TokenBucket

__all__ = ["AddressRate", "DeviceBuckets"]


@attrs.define
class _Shared:
    bucket: TokenBucket
    users: int = 0


class DeviceBuckets:
    """One message-rate bucket per (session, device), shared by that device's sockets."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._shared: dict[tuple[str, str], _Shared] = {}

    def acquire(self, session_id: str, device_id: str) -> TokenBucket:
        """The device's bucket; each acquire needs one :meth:`release`."""
        shared = self._shared.get((session_id, device_id))
        if shared is None:
            shared = self._shared[(session_id, device_id)] = _Shared(
                TokenBucket(self._rate, self._burst)
            )
        shared.users += 1
        return shared.bucket

    def release(self, session_id: str, device_id: str) -> None:
        """Drop one use; the bucket is forgotten with its last socket."""
        key = (session_id, device_id)
        shared = self._shared.get(key)
        if shared is not None:
            shared.users -= 1
            if shared.users <= 0:
                del self._shared[key]

    def __len__(self) -> int:
        return len(self._shared)


class AddressRate:
    """Handshakes per second per client address (a token bucket each), bounded in size.

    The table keeps the most recently seen ``max_addresses``; an address pushed out
    starts again with a full burst, which is harmless: it had been quiet longest.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        exempt: Collection[str] = (),
        max_addresses: int = 65_536,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._exempt = frozenset(exempt)
        self._max = max_addresses
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, address: str, now: float) -> bool:
        """Take one handshake for ``address`` at ``now``; False when over its rate."""
        if address in self._exempt:
            return True
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        return bucket.allow(now)

    def __len__(self) -> int:
        return len(self._buckets)
