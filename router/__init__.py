"""Everything between a client's HTTP request and a provider call."""
