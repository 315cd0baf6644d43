"""The process-wide cap on requests in flight."""

from __future__ import annotations

from router.errors import Overloaded


class Bulkhead:
    """The process-wide cap on requests in flight (``resilience.max_concurrent``)."""

    __slots__ = ("in_flight", "limit", "streams")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0
        self.streams = 0  # streams being relayed to clients now (the relay counts them)

    def enter(self) -> None:
        if self.limit is not None and self.in_flight >= self.limit:
            raise Overloaded(f"Switchboard is at its limit of {self.limit} requests in flight; retry shortly.")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
