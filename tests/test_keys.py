"""Keys: open mode and master-key mode, virtual keys and teams through the admin API, the models a
key may use (aliases, globs, fallbacks, direct routes), rate limits with OpenAI's headers,
revocation, rotation and expiry, and secrets that are never stored or shown twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from router.access.guard import presented_key
from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes

MASTER = "sk-master-test-0123456789"
HELLO = [{"role": "user", "content": "hi"}]
ADMIN = {"authorization": f"Bearer {MASTER}"}


class Upstreams:
    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        self.bodies.append(json.loads(request.content))
        if request.url.host == "down.test":
            return httpx.Response(503, json={"error": {"message": "down"}})
        if request.headers.get("accept") == "text/event-stream":
            return httpx.Response(200, content=fixture_bytes("openai", "stream_text.sse"))
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The flows that touch the database run on both: the embedded default and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def config(tmp_path: Path, master: str = MASTER, url: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "up": {"type": "openai", "base_url": "http://up.test/v1"},
            "down": {"type": "openai", "base_url": "http://down.test/v1"},
            "other": {"type": "openai", "base_url": "http://other.test/v1"},
        },
        "models": {
            "m-small": {"targets": [{"provider": "up", "model": "x"}]},
            "m-flaky": {"targets": [{"provider": "down", "model": "x"}], "fallbacks": ["secret-model"]},
            "secret-model": {"targets": [{"provider": "other", "model": "y"}]},
        },
        "resilience": {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 1000}},
        "auth": {"master_key": master},
        "database": {"url": url or f"sqlite:///{tmp_path / 'keys.db'}"},
        **extra,
    }


@asynccontextmanager
async def gateway(
    tmp_path: Path, master: str = MASTER, env: dict[str, str] | None = None, url: str | None = None, **extra: Any
) -> AsyncIterator[tuple[AsyncTestClient[Any], Upstreams]]:
    upstreams = Upstreams()
    settings = settings_from_dict(config(tmp_path, master, url, **extra), env or {})
    async with AsyncTestClient(app=create_app(settings, transport=httpx.MockTransport(upstreams))) as http:
        yield http, upstreams


async def new_key(http: AsyncTestClient[Any], **fields: Any) -> dict[str, Any]:
    answer = await http.post("/admin/keys", json={"name": "team-a-ci", **fields}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def chat(model: str = "m-small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, **extra}


def database_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("keys.db"))


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_invalid_key(answer: httpx.Response) -> None:
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_api_key", None)


async def test_open_mode_lets_everyone_through_and_the_admin_api_only_reads(tmp_path: Path) -> None:
    async with gateway(tmp_path, master="") as (http, _):
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
        assert (await http.get("/admin/targets")).status_code == 200  # a read, from loopback
        refused = await http.post("/admin/keys", json={"name": "x"})
        assert refused.status_code == 403
        assert "SWITCHBOARD_MASTER_KEY" in refused.json()["error"]["message"]
    assert not (tmp_path / "keys.db").exists()  # open mode needs no database


async def test_every_v1_request_needs_a_valid_key(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, upstreams):
        assert_invalid_key(await http.post("/v1/chat/completions", json=chat()))
        wrong = await http.post("/v1/chat/completions", json=chat(), headers=bearer("sk-sb-0123456789ab-nope"))
        assert_invalid_key(wrong)
        unknown = await http.post("/v1/chat/completions", json=chat(), headers=bearer("sk-anything"))
        assert_invalid_key(unknown)
        assert (
            wrong.json()["error"]["message"].split(" (request id")[0]
            == (unknown.json()["error"]["message"].split(" (request id")[0])
        )  # the same words whatever was wrong: no hint whether a key exists
        assert_invalid_key(await http.get("/v1/models"))
        assert upstreams.hosts == []  # refused before any upstream call
        assert (await http.post("/v1/chat/completions", json=chat(), headers=ADMIN)).status_code == 200
        assert (await http.get("/v1/models", headers=ADMIN)).status_code == 200


async def test_a_virtual_key_works_in_every_sdks_header_and_sees_only_its_models(
    tmp_path: Path, database_url: str
) -> None:
    async with gateway(tmp_path, url=database_url) as (http, upstreams):
        created = await new_key(http, models=["m-s*", "m-flaky"], metadata={"owner": "team-a"})
        key = created["key"]
        assert key.startswith(f"sk-sb-{created['id']}-")
        for headers in (bearer(key), {"api-key": key}, {"x-api-key": key}, {"authorization": f"bearer  {key} "}):
            answer = await http.post("/v1/chat/completions", json=chat(), headers=headers)
            assert answer.status_code == 200, (headers, answer.text)
        refused = await http.post("/v1/chat/completions", json=chat("secret-model"), headers=bearer(key))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "model_not_allowed"
        assert refused.json()["error"]["param"] == "model"
        assert "secret-model" in refused.json()["error"]["message"]
        direct = await http.post("/v1/chat/completions", json=chat("other/y"), headers=bearer(key))
        assert direct.status_code == 403  # `provider/model` is a model like any other
        listed = await http.get("/v1/models", headers=bearer(key))
        assert [m["id"] for m in listed.json()["data"]] == ["m-small", "m-flaky"]
        assert "other.test" not in upstreams.hosts


async def test_a_fallback_the_key_may_not_use_is_skipped(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, upstreams):
        key = (await new_key(http, models=["m-flaky"]))["key"]
        answer = await http.post("/v1/chat/completions", json=chat("m-flaky"), headers=bearer(key))
        assert answer.status_code == 502
        assert "other.test" not in upstreams.hosts  # the fallback was not tried
        assert "not allowed for this key" in answer.json()["error"]["message"]
        # the master key may use it
        assert (await http.post("/v1/chat/completions", json=chat("m-flaky"), headers=ADMIN)).status_code == 200
        assert "other.test" in upstreams.hosts


async def test_rpm_refuses_with_openais_429_and_every_answer_carries_the_headers(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, _):
        key = (await new_key(http, rpm=2, tpm=100_000))["key"]
        first = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert first.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000
        streamed = await http.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(key))
        assert streamed.status_code == 200
        assert streamed.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert 50 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-limit-requests"] == "2"  # the exhausted limit's headers
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        # another key is not affected
        other = (await new_key(http, name="other", rpm=2))["key"]
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(other))).status_code == 200


async def test_tpm_reserves_at_admission_and_settles_with_the_real_usage(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, _):
        key = (await new_key(http, tpm=1000))["key"]
        big = await http.post("/v1/chat/completions", json=chat(max_tokens=900), headers=bearer(key))
        assert big.status_code == 200  # reserved 900 and a little, settled at the answer's 16 tokens
        assert int(big.headers["x-ratelimit-remaining-tokens"]) < 100
        again = await http.post("/v1/chat/completions", json=chat(max_tokens=900), headers=bearer(key))
        assert again.status_code == 200  # the surplus came back when the first one ended
        third = await http.post("/v1/chat/completions", json=chat(max_tokens=990), headers=bearer(key))
        assert third.status_code == 429
        assert "tokens per minute" in third.json()["error"]["message"]


async def test_parallel_requests_are_capped_per_key(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))

    settings = settings_from_dict(config(tmp_path), {})
    app = create_app(settings, transport=httpx.MockTransport(slow))
    # The test client runs one request at a time; the ASGI transport lets two overlap.
    transport = httpx.ASGITransport(app)  # type: ignore[arg-type]
    async with (
        AsyncTestClient(app=app) as http,
        httpx.AsyncClient(transport=transport, base_url="http://t") as concurrent,
    ):
        key = (await new_key(http, max_parallel=1))["key"]
        first = asyncio.create_task(concurrent.post("/v1/chat/completions", json=chat(), headers=bearer(key)))
        await asyncio.sleep(0.05)
        second = await concurrent.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert second.status_code == 429
        assert "in parallel" in second.json()["error"]["message"]
        gate.set()
        assert (await first).status_code == 200
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code == 200


async def test_revoke_disable_expire_and_rotate_take_effect_at_once(tmp_path: Path, database_url: str) -> None:
    async with gateway(tmp_path, url=database_url) as (http, _):
        created = await new_key(http)
        key, key_id = created["key"], created["id"]
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code == 200
        disabled = await http.patch(f"/admin/keys/{key_id}", json={"enabled": False}, headers=ADMIN)
        assert disabled.json()["enabled"] is False
        assert_invalid_key(await http.post("/v1/chat/completions", json=chat(), headers=bearer(key)))
        await http.patch(f"/admin/keys/{key_id}", json={"enabled": True}, headers=ADMIN)
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code == 200
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        await http.patch(f"/admin/keys/{key_id}", json={"expires_at": past}, headers=ADMIN)
        assert_invalid_key(await http.post("/v1/chat/completions", json=chat(), headers=bearer(key)))
        await http.patch(f"/admin/keys/{key_id}", json={"expires_at": None}, headers=ADMIN)
        rotated = await http.post(f"/admin/keys/{key_id}/rotate", headers=ADMIN)
        assert rotated.status_code == 200
        new = rotated.json()["key"]
        assert new != key
        assert new.startswith(f"sk-sb-{key_id}-")
        assert_invalid_key(await http.post("/v1/chat/completions", json=chat(), headers=bearer(key)))
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(new))).status_code == 200
        revoked = await http.delete(f"/admin/keys/{key_id}", headers=ADMIN)
        assert revoked.json()["revoked_at"] is not None
        assert_invalid_key(await http.post("/v1/chat/completions", json=chat(), headers=bearer(new)))
        assert (await http.post(f"/admin/keys/{key_id}/rotate", headers=ADMIN)).status_code == 400


async def test_teams_limit_their_keys_too(tmp_path: Path, database_url: str) -> None:
    async with gateway(tmp_path, url=database_url) as (http, _):
        team = await http.post(
            "/admin/teams", json={"name": "research", "models": ["m-small"], "rpm": 1}, headers=ADMIN
        )
        assert team.status_code == 201
        team_id = team.json()["id"]
        duplicate = await http.post("/admin/teams", json={"name": "research"}, headers=ADMIN)
        assert duplicate.status_code == 400
        a = (await new_key(http, name="a", team_id=team_id))["key"]
        b = (await new_key(http, name="b", team_id=team_id))["key"]
        assert (await http.post("/v1/chat/completions", json=chat("m-flaky"), headers=bearer(a))).status_code == 403
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(a))).status_code == 200
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(b))).status_code == 429
        missing = await http.post("/admin/keys", json={"name": "c", "team_id": "team_nope"}, headers=ADMIN)
        assert missing.status_code == 400
        listed = await http.get("/admin/teams", headers=ADMIN)
        assert [t["name"] for t in listed.json()["data"]] == ["research"]


async def test_secrets_are_shown_once_and_never_stored(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, _):
        created = await new_key(http)
        key = created["key"]
        listed = await http.get("/admin/keys", headers=ADMIN)
        shown = await http.get(f"/admin/keys/{created['id']}", headers=ADMIN)
        for body in (listed.text, shown.text):
            assert key not in body
        assert all("key" not in k for k in [*listed.json()["data"], shown.json()])
        assert created["id"] in listed.text
        # a virtual key cannot use the admin API, whatever it may do on /v1
        refused = await http.get("/admin/keys", headers=bearer(key))
        assert refused.status_code == 403
        assert_invalid_key(await http.get("/admin/keys"))
        assert_invalid_key(await http.get("/admin/keys", headers=bearer("sk-wrong")))
    stored = await asyncio.to_thread(database_bytes, tmp_path)
    secret = key[len("sk-sb-") + 13 :]  # after the id and its dash (the secret may hold dashes too)
    assert secret.encode() not in stored
    assert MASTER.encode() not in stored


async def test_bad_admin_input_gets_a_400_naming_the_field(tmp_path: Path, database_url: str) -> None:
    async with gateway(tmp_path, url=database_url) as (http, _):
        for body, param in (
            ({"name": "x", "rpm": 0}, "rpm"),
            ({"name": "x", "rpm": "ten"}, "rpm"),
            ({"name": "x", "budget_period": "hourly"}, "budget_period"),
            ({"name": "x", "surprise": 1}, None),
            ({"name": "x", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
            ({"rpm": 5}, "name"),
            ({"name": "x'; DROP TABLE keys; --", "models": ["' OR 1=1 --"]}, "ok"),
        ):
            answer = await http.post("/admin/keys", json=body, headers=ADMIN)
            if param == "ok":  # stored as the text it is
                assert answer.status_code == 201
                assert answer.json()["name"] == body["name"]
                continue
            assert answer.status_code == 400, (body, answer.text)
            if param is not None:
                assert answer.json()["error"]["param"] == param, answer.text
        assert (await http.get("/admin/keys/' OR '1'='1", headers=ADMIN)).status_code == 404
        assert (await http.get("/admin/keys/%00abc", headers=ADMIN)).status_code == 404
        assert (await http.patch("/admin/teams/a%00b", json={}, headers=ADMIN)).status_code == 404
        for bad in ({"name": "a\x00b"}, {"name": "x", "metadata": {"k": "v\x00"}}):
            assert (await http.post("/admin/keys", json=bad, headers=ADMIN)).status_code == 400
        assert (await http.get("/admin/usage", params={"model": "m\x00"}, headers=ADMIN)).status_code == 400
        keys = (await http.get("/admin/keys", headers=ADMIN)).json()["data"]
        assert len(keys) == 1


async def test_keys_declared_in_config(tmp_path: Path) -> None:
    env = {"CI_SWITCHBOARD_KEY": "ci-secret-value-1234"}
    declared = [{"name": "ci", "key_env": "CI_SWITCHBOARD_KEY", "models": ["m-small"], "rpm": 60}]
    async with gateway(tmp_path, env=env, keys=declared) as (http, _):
        answer = await http.post("/v1/chat/completions", json=chat(), headers=bearer("ci-secret-value-1234"))
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-limit-requests"] == "60"
        refused = await http.post("/v1/chat/completions", json=chat("m-flaky"), headers=bearer("ci-secret-value-1234"))
        assert refused.status_code == 403


async def test_a_change_through_one_worker_reaches_another_within_a_second(tmp_path: Path, database_url: str) -> None:
    """Two apps on one database, as two workers or replicas are."""
    async with gateway(tmp_path, url=database_url) as (a, _), gateway(tmp_path, url=database_url) as (b, _):
        created = await new_key(a)
        key = created["key"]
        deadline = time.monotonic() + 1.0
        while (await b.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code != 200:
            assert time.monotonic() < deadline, "the new key did not reach the other worker within 1 s"
            await asyncio.sleep(0.05)
        await a.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
        started = time.monotonic()
        while (await b.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code == 200:
            assert time.monotonic() - started < 1.0, "the revocation did not reach the other worker within 1 s"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ([], None),
        ([(b"authorization", b"Bearer sk-1")], "sk-1"),
        ([(b"authorization", b"BEARER sk-1")], "sk-1"),
        ([(b"authorization", b"Basic sk-1")], ""),
        ([(b"authorization", b"Bearer")], ""),
        ([(b"authorization", b"Bearer sk-1 sk-2")], ""),
        ([(b"authorization", b"Bearer sk-\xff")], ""),
        ([(b"authorization", b"Bearer sk-1\t")], "sk-1"),
        ([(b"api-key", b"sk-2")], "sk-2"),
        ([(b"x-api-key", b"sk-3"), (b"api-key", b"sk-2")], "sk-2"),
        ([(b"authorization", b"Bearer sk-1"), (b"x-api-key", b"sk-3")], "sk-1"),
        ([(b"authorization", b"Basic x"), (b"x-api-key", b"sk-3")], ""),  # no falling through
    ],
)
def test_the_key_is_read_strictly(headers: list[tuple[bytes, bytes]], found: str | None) -> None:
    assert presented_key(headers) == found


def test_the_memory_count_does_not_drift_when_a_request_outlives_the_window() -> None:
    """A stream longer than the minute settles after its reservation left the window: the true-up
    must not touch the window's sum (which would give away or withhold tokens for good)."""
    from router.access.limits import Admission, Limiter

    limiter = Limiter()
    subject = limiter.subject("key:k", None, 1000, None)
    long = limiter.admit([subject], 900, now=0.0)
    assert isinstance(long, Admission)
    short = limiter.admit([subject], 50, now=61.0)  # the first reservation leaves the window
    assert isinstance(short, Admission)
    assert subject.token_sum == 50
    long.settle(5000)  # far more than reserved, but a minute ago
    assert subject.token_sum == 50
    short.settle(10)
    assert subject.token_sum == 10
    assert subject.parallel == 0


def test_a_settlement_finds_its_own_reservation_after_older_ones_left() -> None:
    from router.access.limits import Admission, Limiter

    limiter = Limiter()
    subject = limiter.subject("key:k", None, 10_000, None)
    _, second, third = (limiter.admit([subject], n, now=float(t)) for t, n in ((0, 100), (1, 200), (2, 300)))
    assert isinstance(second, Admission)
    assert isinstance(third, Admission)
    assert limiter.admit([subject], 1, now=60.5) is not None  # the first has left the window
    assert subject.token_sum == 501
    second.settle(250)
    assert list(subject.token_amounts) == [250, 300, 1]
    third.settle(0)
    assert list(subject.token_amounts) == [250, 0, 1]
    assert subject.token_sum == 251


@pytest.mark.parametrize(
    ("auth", "problem"),
    [({"master_key": "short"}, "at least 16"), ({"master_key": "   "}, None)],
)
def test_the_master_key_is_checked(tmp_path: Path, auth: dict[str, str], problem: str | None) -> None:
    from router.config import ConfigError

    if problem is None:  # whitespace only: no master key, open mode
        assert settings_from_dict(config(tmp_path, master=auth["master_key"]), {}).config.auth.master_key == ""
        return
    with pytest.raises(ConfigError, match=problem) as raised:
        settings_from_dict(config(tmp_path, master=auth["master_key"]), {})
    assert "short'" not in str(raised.value)  # the value itself is never printed


async def test_the_master_key_is_taken_without_surrounding_whitespace(tmp_path: Path) -> None:
    async with gateway(tmp_path, master=f"  {MASTER}\n") as (http, _):
        assert (await http.get("/v1/models", headers=ADMIN)).status_code == 200


def test_declared_key_names_fit_their_ids(tmp_path: Path) -> None:
    from router.config import ConfigError

    with pytest.raises(ConfigError, match=r"keys\[0\]\.name"):
        settings_from_dict(config(tmp_path, keys=[{"name": "x" * 59, "key_hash": "0" * 64}]), {})


async def test_fuzzed_key_headers_never_give_a_500(tmp_path: Path) -> None:
    """Random bytes in every header a key may come in (non-ASCII, control characters, lengths up
    to 4 KB, several at once): always a 401 in OpenAI's shape, never a 500 or a key accepted."""
    import random

    from tests.live import chat_scope

    rng = random.Random(1234)
    settings = settings_from_dict(config(tmp_path), {})
    app = create_app(settings, transport=httpx.MockTransport(Upstreams()))
    body = b'{"model":"m-small","messages":[{"role":"user","content":"hi"}]}'
    alphabet = [bytes([b]) for b in range(256)]
    seen: list[int] = []
    async with AsyncTestClient(app=app) as http:
        for _ in range(400):
            headers = []
            for name in rng.sample([b"authorization", b"api-key", b"x-api-key"], k=rng.randint(1, 3)):
                size = rng.choice([0, 1, 7, 40, 70, 300, 4096])
                value = b"".join(rng.choice(alphabet) for _ in range(size))
                if name == b"authorization" and rng.random() < 0.5:
                    value = rng.choice([b"Bearer ", b"bearer\t", b"BEARER  ", b"Basic "]) + value
                if rng.random() < 0.3:
                    value = b"sk-sb-" + value
                headers.append((name, value))
            status: list[int] = []
            messages: list[bytes] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(
                message: dict[str, Any], status: list[int] = status, messages: list[bytes] = messages
            ) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])
                elif message["type"] == "http.response.body":
                    messages.append(message.get("body", b""))

            await app(chat_scope(body, *headers), receive, send)  # type: ignore[arg-type]
            seen.append(status[0])
            if status[0] == 401:
                assert b'"code":"invalid_api_key"' in b"".join(messages)
        assert (await http.post("/v1/chat/completions", json=chat(), headers=ADMIN)).status_code == 200
    assert set(seen) == {401}


async def test_no_key_appears_in_any_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every path a key travels (create, use, wrong, over its limits, disabled, rotated, revoked,
    the admin API with the master key and a virtual key): no secret in any log record."""
    import logging

    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [MASTER]
    async with gateway(tmp_path) as (http, _):
        created = await new_key(http, rpm=1, models=["m-small"])
        secrets.append(created["key"])
        key_id = created["id"]
        for headers in (bearer(created["key"]), {"x-api-key": created["key"]}, bearer(created["key"] + "x")):
            await http.post("/v1/chat/completions", json=chat(), headers=headers)
        await http.post("/v1/chat/completions", json=chat("secret-model"), headers=bearer(created["key"]))
        await http.get("/admin/keys", headers=bearer(created["key"]))
        await http.patch(f"/admin/keys/{key_id}", json={"enabled": False}, headers=ADMIN)
        await http.post("/v1/chat/completions", json=chat(), headers=bearer(created["key"]))
        rotated = (await http.post(f"/admin/keys/{key_id}/rotate", headers=ADMIN)).json()["key"]
        secrets.append(rotated)
        await http.delete(f"/admin/keys/{key_id}", headers=ADMIN)
        await http.post("/v1/chat/completions", json=chat(), headers=bearer(rotated))
        await http.post("/v1/chat/completions", json=chat(), headers={"authorization": f"Bearer {MASTER[:-1]}"})
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        for secret in secrets:
            assert secret not in text, record.getMessage()
            if secret.startswith("sk-sb-"):
                assert secret[len("sk-sb-") + 13 :] not in text
