"""The configured providers made callable: the registry of adapters and transports, and the
aiohttp-backed httpx transport."""
