"""Adapters between OpenAI's Chat Completions wire format and every upstream's own.

Nothing in this package performs I/O or knows about routing: an adapter builds an
``httpx.Request`` and translates what comes back. The gateway in ``router`` sends it.
"""
