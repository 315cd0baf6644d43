"""Every route also without the ``/v1`` prefix (LiteLLM-style clients and ``api_base`` settings
without it), and ``GET /v1/models/{model}``: checked against the openai package's own types, and
driven with the openai SDK."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import httpx2
import msgspec
import openai
import pytest
from litestar.testing import AsyncTestClient
from openai.types import Model

from router.app import create_app
from router.config import settings_from_dict
from tests.conformance import check_completion, check_error, check_models
from tests.test_keys import ADMIN, bearer, chat, gateway, new_key

CONFIG: dict[str, Any] = {
    "providers": {"demo": {"type": "mock"}},
    "models": {
        "demo": {"targets": [{"provider": "demo", "model": "echo"}]},
        "team/gpt": {"targets": [{"provider": "demo", "model": "echo"}]},  # an alias with a slash
    },
}


def app() -> Any:
    return create_app(settings_from_dict(CONFIG, {}))


@pytest.mark.parametrize("prefix", ["/v1", ""])
async def test_chat_and_models_answer_with_and_without_v1(prefix: str) -> None:
    async with AsyncTestClient(app=app()) as http:
        answer = await http.post(
            f"{prefix}/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert answer.status_code == 200
        check_completion(answer.content)
        listing = await http.get(f"{prefix}/models")
        assert [m["id"] for m in check_models(listing.content)["data"]] == ["demo", "team/gpt"]
        for model in ("demo", "team/gpt"):
            one = await http.get(f"{prefix}/models/{model}")
            assert one.status_code == 200
            card = Model.model_validate_json(one.content, strict=True)
            assert (card.id, card.object, card.owned_by) == (model, "model", "switchboard")
        missing = await http.get(f"{prefix}/models/nope")
        assert missing.status_code == 404
        error = check_error(missing.content)["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model")


async def test_the_openai_sdk_retrieves_a_model_without_v1_in_its_base_url() -> None:
    served = app()
    transport = httpx2.ASGITransport(cast(Any, served))  # the openai SDK's own HTTP client
    async with AsyncTestClient(app=served), httpx2.AsyncClient(transport=transport) as http_client:  # with its lifespan
        client = openai.AsyncOpenAI(base_url="http://switchboard", api_key="none", http_client=http_client)
        assert (await client.models.retrieve("demo")).id == "demo"
        page = await client.models.list()
        assert [m.id for m in page.data] == ["demo", "team/gpt"]
        completion = await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("nope")
        assert missing.value.code == "model_not_found"


async def test_a_key_sees_only_its_models_one_by_one(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, _):
        key = (await new_key(http, models=["m-small"]))["key"]
        assert (await http.get("/v1/models/m-small", headers=bearer(key))).status_code == 200
        hidden = await http.get("/v1/models/secret-model", headers=bearer(key))
        unknown = await http.get("/v1/models/no-such-model", headers=bearer(key))
        assert hidden.status_code == unknown.status_code == 404
        # the same words for a model that exists and one that does not
        hidden_message = msgspec.json.decode(hidden.content)["error"]["message"].split(" (request id")[0]
        unknown_message = msgspec.json.decode(unknown.content)["error"]["message"].split(" (request id")[0]
        assert hidden_message.replace("secret-model", "X") == unknown_message.replace("no-such-model", "X")
        assert (await http.get("/v1/models/secret-model", headers=ADMIN)).status_code == 200
        assert (await http.get("/models/m-small")).status_code == 401
        assert (await http.post("/chat/completions", json=chat(), headers=bearer(key))).status_code == 200
