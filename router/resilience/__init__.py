"""Per-target resilience: circuit breakers, target state and leases, the retry policy, the
bulkhead. A target takes a request through ``TargetState.acquire()``, which answers a ``Lease`` or
the reason to skip the target; the lease ends as ``succeeded``, ``failed`` or ``abandoned`` (the
client left: nothing is learned about the target)."""
