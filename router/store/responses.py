"""Stored responses (the Responses API's ``store``): what ``previous_response_id`` continues from
and ``GET``/``DELETE /v1/responses/{id}`` read.

A response is kept in this worker's memory at once (the most recent ``MEMORY`` of them, encoded:
a thousand nested dicts would be walked by the garbage collector on every full collection, which
measurably slowed every request while they were kept) and
written to the database within ``FLUSH_S``, off the request path, for every worker and replica,
until it expires (``responses.store_ttl_s``). Without a database (open mode), memory is all there
is. A response belongs to the key that made it: another key cannot read, continue or delete it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from router.store.database import Database, StoredResponse

log = logging.getLogger(__name__)

FLUSH_S: Final = 0.5
PURGE_EVERY_S: Final = 3600.0
MEMORY: Final = 1000  # responses
# Output items findable by id (``item_reference``): each id names its response, where the item is
# read (in memory, or in the database once memory has let it go; without one, the last ``MEMORY``).
ITEMS: Final = 10_000


class _Kept(msgspec.Struct, frozen=True, gc=False):
    """A stored response as this worker keeps it: its JSON (nothing for the collector to walk).
    ``items`` is the conversation before the response's output when ``then_output`` (its output,
    the rest of the conversation, is in ``response`` already: not kept twice), else all of it."""

    id: str
    key_id: str
    created_at: datetime
    expires_at: datetime
    response: bytes
    items: bytes
    native: bool
    then_output: bool = False

    def stored(self) -> StoredResponse:
        response = _decode_response(self.response)
        items = _decode_items(self.items)
        output = response.get("output")
        if self.then_output and isinstance(output, list):
            items += output
        return StoredResponse(self.id, self.key_id, self.created_at, self.expires_at, response, items, self.native)


_encode = msgspec.json.Encoder().encode
_decode_response = msgspec.json.Decoder(dict[str, Any]).decode
_decode_items = msgspec.json.Decoder(list[Any]).decode


class ResponseStore:
    def __init__(self, database: Database | None, ttl_s: float) -> None:
        self.database = database
        self._ttl = timedelta(seconds=ttl_s)
        self._recent: OrderedDict[str, _Kept] = OrderedDict()
        self._items: OrderedDict[str, tuple[str, str]] = OrderedDict()  # item id → (owner, response id)
        self._pending: list[StoredResponse] = []
        self._deleted: set[str] = set()  # deleted here, maybe not yet written: never served again
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.database is not None:
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    def put(
        self, key_id: str, response: dict[str, Any], inputs: list[Any], native: bool = False, encoded: bytes = b""
    ) -> None:
        """Keep ``response`` (``encoded``: its JSON, when the caller has it already) and the
        conversation before it, ``inputs``: the conversation is those, then its output."""
        now = datetime.now(UTC)
        response_id, expires_at = str(response["id"]), now + self._ttl
        encoded = encoded or _encode(response)
        self._keep(_Kept(response_id, key_id, now, expires_at, encoded, _encode(inputs), native, True), response)
        if self.database is not None:
            output = response.get("output")
            items = [*inputs, *output] if isinstance(output, list) else inputs
            self._pending.append(StoredResponse(response_id, key_id, now, expires_at, response, items, native))

    def _remember(self, stored: StoredResponse) -> None:
        """A response read from the database, kept here too."""
        encoded, items = _encode(stored.response), _encode(stored.items)
        kept = _Kept(stored.id, stored.key_id, stored.created_at, stored.expires_at, encoded, items, stored.native)
        self._keep(kept, stored.response)

    def _keep(self, kept: _Kept, response: dict[str, Any]) -> None:
        self._recent[kept.id] = kept
        while len(self._recent) > MEMORY:
            self._recent.popitem(last=False)
        for item in response.get("output") or ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                self._items[item["id"]] = (kept.key_id, kept.id)
        while len(self._items) > ITEMS:
            self._items.popitem(last=False)

    async def get(self, response_id: str, key_id: str) -> StoredResponse | None:
        """The response, if it exists, has not expired and belongs to ``key_id``."""
        stored = await self._find(response_id)
        if stored is None or stored.key_id != key_id or stored.expires_at <= datetime.now(UTC):
            return None
        return stored

    async def known(self, response_id: str) -> bool:
        """Whether Switchboard has, or had, a response with this id (whoever made it): such an
        id is never passed on to an upstream on another key's behalf."""
        return response_id in self._deleted or await self._find(response_id) is not None

    async def _find(self, response_id: str) -> StoredResponse | None:
        if response_id in self._deleted:
            return None
        kept = self._recent.get(response_id)
        if kept is not None:
            return kept.stored()
        if self.database is None:
            return None
        stored = await self.database.get_response(response_id)
        if stored is not None:
            self._remember(stored)
        return stored

    def item_owner(self, item_id: str) -> str | None:
        found = self._items.get(item_id)
        return found[0] if found is not None else None

    async def item(self, item_id: str, key_id: str) -> dict[str, Any] | None:
        """An output item of one of this key's recent responses, for ``item_reference``."""
        found = self._items.get(item_id)
        if found is None or found[0] != key_id:
            return None
        stored = await self.get(found[1], key_id)
        if stored is None:
            return None
        for item in stored.response.get("output") or ():
            if isinstance(item, dict) and item.get("id") == item_id:
                return item
        return None

    async def delete(self, response_id: str, key_id: str) -> bool:
        stored = await self.get(response_id, key_id)
        if stored is None:
            return False
        self._recent.pop(response_id, None)
        for item in stored.response.get("output") or ():
            if isinstance(item, dict):
                self._items.pop(str(item.get("id")), None)
        self._pending = [p for p in self._pending if p.id != response_id]
        self._deleted.add(response_id)
        if self.database is not None:
            await self.database.delete_response(response_id)
        return True

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch or self.database is None:
            return
        try:
            await self.database.put_responses(batch)
        except Exception:
            # One by one, so that a row the database refuses for good (a duplicate id, a value
            # too long) is dropped with a warning instead of blocking every later one.
            for row in batch:
                try:
                    await self.database.put_responses([row])
                except Exception as exc:
                    if not await self._reachable():
                        self._pending[:0] = batch[batch.index(row) :]  # the database is away: later
                        raise
                    log.warning(
                        "responses: cannot store %s (%s); it is kept in memory only", row.id, type(exc).__name__
                    )

    async def _reachable(self) -> bool:
        assert self.database is not None
        try:
            await self.database.version()
        except Exception:
            return False
        return True

    async def _flush_forever(self) -> None:
        purged_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
                if loop.time() - purged_at > PURGE_EVERY_S and self.database is not None:
                    purged_at = loop.time()
                    await self.database.purge_responses(datetime.now(UTC))
            except Exception:
                log.warning("responses: cannot write to the database; will retry", exc_info=True)
