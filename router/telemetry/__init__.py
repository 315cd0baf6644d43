"""What Switchboard tells its operators: the per-request log line, and (later) metrics and traces,
each a listener on the ``Outcome``."""
