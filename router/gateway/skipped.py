"""The one way a target is passed over before any call."""

from __future__ import annotations


class TargetSkipped(Exception):
    """The target refused the attempt before any call (breaker open, probe in flight, full, or an
    operation its provider has no API for)."""
