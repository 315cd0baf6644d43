"""Three Switchboard processes sharing PostgreSQL and Redis, driven with the openai SDK as a
platform team's users would: one rpm between them, one budget between them, and a revocation
through one that every other honours within a second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from tests.live import running_proxy

MASTER = "sk-master-e2e-replicas-0123456789"
CONFIG = """\
providers: {{demo: {{type: mock}}}}
models:
  demo: {{targets: [{{provider: demo, model: echo}}]}}
pricing: {{echo: {{input: 1000, output: 1000}}}}    # $0.001 a token: budgets run out fast
auth: {{master_key: "{master}"}}
database: {{url: "{database}"}}
state: {{backend: redis, url: "{redis}"}}
"""


@pytest.fixture
def three(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[list[str]]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(master=MASTER, database=postgres_url, redis=redis_url))
    with ExitStack() as stack:
        yield [stack.enter_context(running_proxy(config, {}, tmp_path / f"replica-{i}.log")) for i in range(3)]


def admin(base: str, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    answer = httpx.request(
        method, f"{base}{path}", json=body, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
    )
    assert answer.status_code in (200, 201), answer.text
    result: dict[str, object] = answer.json()
    return result


def sdk(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=10)


def ask(client: openai.OpenAI) -> int:
    try:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello there"}])
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def wait_everywhere(bases: list[str], key: str) -> None:
    """A new key reaches every replica within a second."""
    deadline = time.monotonic() + 1.5
    for base in bases:
        while httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5).status_code != 200:
            assert time.monotonic() < deadline, f"{base} did not see the new key"
            time.sleep(0.05)


def test_three_replicas_share_the_rpm_the_budget_and_a_revocation(three: list[str]) -> None:
    created = admin(three[0], "POST", "/admin/keys", {"name": "shared-rpm", "rpm": 30})
    key = str(created["key"])
    wait_everywhere(three, key)
    clients = [sdk(base, key) for base in three]
    statuses = [ask(clients[i % 3]) for i in range(45)]
    assert statuses.count(200) == 30, statuses
    assert set(statuses[30:]) == {429}

    # a budget: each answer costs a few cents; spend is counted in Redis, so the replica that
    # refuses first is not ahead of the others: all three refuse at once, with no database flush
    budgeted = str(admin(three[1], "POST", "/admin/keys", {"name": "shared-budget", "budget_usd": 0.05})["key"])
    wait_everywhere(three, budgeted)
    clients = [sdk(base, budgeted) for base in three]
    refused_at = None
    for i in range(60):
        if ask(clients[i % 3]) == 429:
            refused_at = i
            break
        time.sleep(0.05)
    assert refused_at is not None, "the budget never ran out"
    for client in clients:
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.code == "insufficient_quota"
    deadline = time.monotonic() + 3  # usage reaches the database within a flush (a second)
    while True:
        usage = admin(three[2], "GET", f"/admin/usage?group_by=key&key_id={budgeted.split('-')[2]}")
        rows = usage["data"]
        assert isinstance(rows, list)
        if rows and rows[0]["requests"] >= refused_at:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    assert len(rows) == 1
    assert rows[0]["cost_usd"] >= 0.05
    assert rows[0]["requests"] == refused_at  # not one request past the budget, on any replica

    # revoked through one replica: refused by every replica within a second
    revoked = admin(three[0], "POST", "/admin/keys", {"name": "to-revoke"})
    token = str(revoked["key"])
    wait_everywhere(three, token)
    admin(three[1], "DELETE", f"/admin/keys/{revoked['id']}")
    started = time.monotonic()
    for base in three:
        while ask(sdk(base, token)) != 401:
            assert time.monotonic() - started < 1.0, f"{base} still took a revoked key"
            time.sleep(0.05)
