"""Budgets and spend: charged from each request's cost, refused with OpenAI's insufficient_quota
once spent, per period, kept across restarts and shared between workers through the database;
``/admin/usage`` aggregates it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from providers.base import TokenUsage
from router.access.spend import Ledger, next_reset, period_start
from router.app import create_app
from router.config import settings_from_dict
from router.gateway.outcome import Outcome
from router.store.database import Database
from router.store.url import async_url
from tests.conftest import fixture_bytes
from tests.test_keys import ADMIN, bearer, config, database_url

__all__ = ["database_url"]  # the fixture: SQLite and PostgreSQL

HELLO = [{"role": "user", "content": "hi"}]
# completion.json uses 9 prompt and 7 completion tokens: at $1000 per million each, $0.016 a request
PRICED: dict[str, Any] = {"pricing": {"x": {"input": 1000, "output": 1000}}}
PER_REQUEST = 16 * 1000 / 1e6


def upstream(request: httpx.Request) -> httpx.Response:
    if request.headers.get("accept") == "text/event-stream":
        return httpx.Response(200, content=fixture_bytes("openai", "stream_text.sse"))
    return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


def app_for(tmp_path: Path, url: str | None = None) -> Any:
    settings = settings_from_dict(config(tmp_path, url=url, **PRICED), {})
    return create_app(settings, transport=httpx.MockTransport(upstream))


async def ask(http: AsyncTestClient[Any], key: str, **extra: Any) -> httpx.Response:
    return await http.post(
        "/v1/chat/completions", json={"model": "m-small", "messages": HELLO, **extra}, headers=bearer(key)
    )


def assert_over_budget(answer: httpx.Response) -> None:
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert answer.headers["x-should-retry"] == "false"


async def test_a_key_over_its_budget_is_refused_until_it_is_raised(tmp_path: Path) -> None:
    async with AsyncTestClient(app=app_for(tmp_path)) as http:
        created = (await http.post("/admin/keys", json={"name": "k", "budget_usd": 0.02}, headers=ADMIN)).json()
        key = created["key"]
        assert (await ask(http, key)).status_code == 200  # spent 0.016
        assert (await ask(http, key, stream=True)).status_code == 200  # 0.016 < 0.02: admitted; now over
        refused = await ask(http, key)
        assert_over_budget(refused)
        assert "does not reset" in refused.json()["error"]["message"]  # a total budget
        await http.patch(f"/admin/keys/{created['id']}", json={"budget_usd": 1.0}, headers=ADMIN)
        assert (await ask(http, key)).status_code == 200


async def test_a_team_budget_covers_all_its_keys(tmp_path: Path) -> None:
    async with AsyncTestClient(app=app_for(tmp_path)) as http:
        team = (
            await http.post(
                "/admin/teams", json={"name": "t", "budget_usd": 0.03, "budget_period": "daily"}, headers=ADMIN
            )
        ).json()
        a = (await http.post("/admin/keys", json={"name": "a", "team_id": team["id"]}, headers=ADMIN)).json()["key"]
        b = (await http.post("/admin/keys", json={"name": "b", "team_id": team["id"]}, headers=ADMIN)).json()["key"]
        assert (await ask(http, a)).status_code == 200
        assert (await ask(http, b)).status_code == 200
        refused = await ask(http, a)
        assert_over_budget(refused)
        tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
        assert f"it resets on {tomorrow} (UTC)" in refused.json()["error"]["message"]  # a daily budget
        assert_over_budget(await ask(http, b))


async def test_spend_survives_a_restart_and_reaches_other_workers(tmp_path: Path, database_url: str) -> None:
    first = app_for(tmp_path, database_url)
    async with AsyncTestClient(app=first) as http:
        created = (await http.post("/admin/keys", json={"name": "k", "budget_usd": 0.03}, headers=ADMIN)).json()
        key = created["key"]
        assert (await ask(http, key)).status_code == 200
        async with AsyncTestClient(app=app_for(tmp_path, database_url)) as other:  # another worker, same database
            assert (await ask(other, key)).status_code == 200  # $0.032 spent between the two
            deadline = time.monotonic() + 3  # a flush each second on each side
            while (await ask(http, key)).status_code != 429:
                assert time.monotonic() < deadline, "the other worker's spend never arrived"
                await asyncio.sleep(0.2)
    async with AsyncTestClient(app=app_for(tmp_path, database_url)) as restarted:
        assert_over_budget(await ask(restarted, key))


async def test_usage_is_reported_by_key_team_model_and_day(tmp_path: Path, database_url: str) -> None:
    async with AsyncTestClient(app=app_for(tmp_path, database_url)) as http:
        team = (await http.post("/admin/teams", json={"name": "t"}, headers=ADMIN)).json()
        a = (await http.post("/admin/keys", json={"name": "a", "team_id": team["id"]}, headers=ADMIN)).json()
        b = (await http.post("/admin/keys", json={"name": "b"}, headers=ADMIN)).json()
        for _ in range(3):
            assert (await ask(http, a["key"])).status_code == 200
        assert (await ask(http, b["key"], stream=True)).status_code == 200
        deadline = time.monotonic() + 3
        while True:
            by_key = (await http.get("/admin/usage", params={"group_by": "key"}, headers=ADMIN)).json()["data"]
            if sum(r["requests"] for r in by_key) == 4:
                break
            assert time.monotonic() < deadline, by_key
            await asyncio.sleep(0.2)
        rows = {r["group"]: r for r in by_key}
        assert rows[a["id"]]["requests"] == 3
        assert rows[a["id"]]["prompt_tokens"] == 27
        assert rows[a["id"]]["completion_tokens"] == 21
        assert rows[a["id"]]["cost_usd"] == pytest.approx(3 * PER_REQUEST)
        assert rows[b["id"]]["requests"] == 1
        by_team = (await http.get("/admin/usage", params={"group_by": "team"}, headers=ADMIN)).json()["data"]
        assert {r["group"]: r["requests"] for r in by_team} == {team["id"]: 3, "": 1}
        by_day = (await http.get("/admin/usage", headers=ADMIN)).json()
        assert by_day["group_by"] == "day"
        assert [r["requests"] for r in by_day["data"]] == [4]
        only_a = await http.get("/admin/usage", params={"key_id": a["id"], "group_by": "model"}, headers=ADMIN)
        assert only_a.json()["data"] == [
            {
                "group": "m-small",
                "requests": 3,
                "prompt_tokens": 27,
                "completion_tokens": 21,
                "cost_usd": pytest.approx(0.048),
            }
        ]
        yesterday = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
        past = await http.get("/admin/usage", params={"to": yesterday}, headers=ADMIN)
        assert past.json()["data"] == []
        for params, param in (
            ({"group_by": "hour"}, "group_by"),
            ({"from": "last tuesday"}, "from"),
            ({"from": "2026-02-01", "to": "2026-01-01"}, "from"),
            ({"key": "x"}, "key"),
        ):
            bad = await http.get("/admin/usage", params=params, headers=ADMIN)
            assert bad.status_code == 400
            assert bad.json()["error"]["param"] == param
        assert (await http.get("/admin/usage", headers=bearer(a["key"]))).status_code == 403


def outcome(key_id: str, team_id: str | None, cost: float) -> Outcome:
    return Outcome(
        request_id="r",
        alias="m",
        stream=False,
        status=200,
        code=None,
        attempts=(),
        target="up/x",
        provider="openai",
        response_model="x",
        response_id=None,
        finish_reason="stop",
        usage=TokenUsage(prompt=1, completion=1),
        cost_usd=cost,
        ttft_s=None,
        duration_s=0.1,
        client_disconnected=False,
        key_id=key_id,
        team_id=team_id,
    )


async def test_periods_reset_on_their_day(tmp_path: Path) -> None:
    database = Database(async_url(f"sqlite:///{tmp_path / 'spend.db'}"))
    await database.migrate()
    today = [date(2026, 11, 28)]  # a Saturday
    ledger = Ledger(database, today=lambda: today[0])
    try:
        await ledger.refresh()
        ledger(outcome("k1", "t1", 1.5))
        assert ledger.spent("key:k1", "daily") == 1.5  # before it is written, too
        await ledger.flush()
        assert ledger.spent("key:k1", "daily") == 1.5
        assert ledger.spent("team:t1", "monthly") == 1.5
        today[0] = date(2026, 11, 30)  # Monday: a new day and a new week, the same month
        await ledger.refresh()
        assert ledger.spent("key:k1", "daily") == 0
        assert ledger.spent("key:k1", "weekly") == 0
        assert ledger.spent("key:k1", "monthly") == 1.5
        today[0] = date(2026, 12, 1)
        await ledger.refresh()  # as the flush each second does: the new day is seen
        ledger(outcome("k1", None, 0.25))
        await ledger.flush()
        assert ledger.spent("key:k1", "monthly") == 0.25
        assert ledger.spent("key:k1", "total") == 1.75
        assert ledger.spent("team:t1", "total") == 1.5
    finally:
        await database.close()
    assert period_start("weekly", date(2026, 11, 28)) == date(2026, 11, 23)
    assert next_reset("monthly", date(2026, 12, 31)) == date(2027, 1, 1)
    assert next_reset("weekly", date(2026, 11, 30)) == date(2026, 12, 7)
    assert next_reset("total", date(2026, 11, 30)) is None


async def test_a_batch_that_cannot_be_written_is_kept_for_the_next(tmp_path: Path) -> None:
    database = Database(async_url(f"sqlite:///{tmp_path / 'spend.db'}"))
    await database.migrate()
    ledger = Ledger(database)
    try:
        ledger(outcome("k1", None, 1.0))
        real = database.add_usage

        async def broken(rows: Any) -> None:
            raise OSError("disk full")

        database.add_usage = broken  # type: ignore[method-assign]
        with pytest.raises(OSError, match="disk full"):
            await ledger.flush()
        assert ledger.spent("key:k1", "total") == 1.0  # still counted
        database.add_usage = real  # type: ignore[method-assign]
        ledger(outcome("k1", None, 0.5))
        await ledger.flush()
        assert ledger.spent("key:k1", "total") == 1.5  # written once, not lost, not twice
        rows = await database.usage_report("key")
        assert rows[0]["requests"] == 2
    finally:
        await database.close()


async def test_an_answer_whose_usage_never_came_is_charged_its_reservation(tmp_path: Path) -> None:
    from msgspec.structs import replace

    from router.config import PriceConfig
    from router.gateway.pricing import Pricing

    database = Database(async_url(f"sqlite:///{tmp_path / 'spend.db'}"))
    await database.migrate()
    ledger = Ledger(database, Pricing({"x": PriceConfig(input=1, output=1000)}))
    try:
        cut = replace(outcome("k1", None, 0.0), usage=None, cost_usd=None, reserved_tokens=1000)
        ledger(cut)  # 1000 tokens at $1000 per million output tokens
        assert ledger.spent("key:k1", "total") == pytest.approx(1.0)
        ledger(replace(cut, reserved_tokens=None))  # nothing reserved, nothing known: nothing charged
        assert ledger.spent("key:k1", "total") == pytest.approx(1.0)
    finally:
        await database.close()


async def test_replicas_starting_together_migrate_one_at_a_time(postgres_url: str) -> None:
    first, second = (Database(async_url(postgres_url)) for _ in range(2))
    try:
        await asyncio.gather(first.migrate(), second.migrate())
        assert await first.version() == 0
    finally:
        await first.close()
        await second.close()


async def test_a_batch_reaches_the_shared_count_before_the_database(tmp_path: Path) -> None:
    """The rule that keeps a rebuilt shared count from holding a request twice: a charge is in the
    database only after it reached Redis (or was given up on)."""
    database = Database(async_url(f"sqlite:///{tmp_path / 'order.db'}"))
    await database.migrate()
    order: list[str] = []

    class Shared:
        def charge(self, subjects: Any, cost: float, fields: Any) -> None:
            order.append(f"charge {','.join(subjects)} {cost}")

        async def drain(self) -> None:
            await asyncio.sleep(0.01)
            order.append("drain")

    write = database.add_usage

    async def add_usage(batch: Any) -> None:
        order.append("write")
        await write(batch)

    database.add_usage = add_usage  # type: ignore[method-assign,assignment]
    ledger = Ledger(database, shared=Shared())
    try:
        await ledger.refresh()
        ledger(outcome("k1", "t1", 0.5))
        await ledger.flush()
        assert order == ["charge key:k1,team:t1 0.5", "drain", "write"]
        stored = ledger.stored("key:k1")
        assert stored is not None
        assert stored["total"] == 0.5
    finally:
        await database.close()


async def test_no_shared_count_starts_from_yesterdays_figure(tmp_path: Path) -> None:
    """Just after midnight, before the first read of the new day, the database's figures are
    yesterday's: a count seeded from them would carry yesterday's daily spend all day."""
    database = Database(async_url(f"sqlite:///{tmp_path / 'midnight.db'}"))
    await database.migrate()
    today = [date(2026, 11, 29)]
    ledger = Ledger(database, today=lambda: today[0])
    ledger._day_checked = -1e9
    try:
        await ledger.refresh()
        ledger(outcome("k1", None, 9.8))
        await ledger.flush()
        assert ledger.stored("key:k1") == {
            "daily:2026-11-29": 9.8,
            "weekly:2026-11-23": 9.8,
            "monthly:2026-11-01": 9.8,
            "total": 9.8,
        }
        today[0] = date(2026, 11, 30)
        ledger._day_checked = -1e9  # the day is looked up again
        assert ledger.stored("key:k1") is None
        await ledger.refresh()
        assert ledger.stored("key:k1") == {
            "daily:2026-11-30": 0.0,
            "weekly:2026-11-30": 0.0,
            "monthly:2026-11-01": 9.8,
            "total": 9.8,
        }
    finally:
        await database.close()
