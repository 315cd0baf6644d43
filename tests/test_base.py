"""Helpers every adapter shares: Retry-After parsing, classification, redaction."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from providers.base import SecretRedactor, error_for_status, retry_after_seconds
from providers.errors import UpstreamAuthFailed, UpstreamRateLimited, UpstreamRejected, UpstreamServerError

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "Sun, 22 Nov 2026 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Sun, 22 Nov 2026 11:00:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(httpx.Headers(headers), now=NOW) == expected


@pytest.mark.parametrize(
    ("status", "kind", "client_status"),
    [
        (400, UpstreamRejected, 400),
        (404, UpstreamRejected, 404),
        (413, UpstreamRejected, 413),
        (422, UpstreamRejected, 422),
        (401, UpstreamAuthFailed, 502),
        (403, UpstreamAuthFailed, 502),
        (429, UpstreamRateLimited, 429),
        (500, UpstreamServerError, 502),
        (503, UpstreamServerError, 502),
        (529, UpstreamServerError, 502),
        (409, UpstreamServerError, 502),
    ],
)
def test_classification(status: int, kind: type, client_status: int) -> None:
    error = error_for_status(status, "msg", provider="p")
    assert type(error) is kind
    assert error.status == client_status
    assert error.upstream_status == status


def test_only_client_faults_spare_the_breaker() -> None:
    assert not error_for_status(400, "m", provider="p").trips_breaker
    assert error_for_status(401, "m", provider="p").trips_breaker
    assert error_for_status(500, "m", provider="p").trips_breaker


def test_redactor_removes_secrets_and_key_shaped_tokens() -> None:
    redact = SecretRedactor("my-very-secret", "https://internal:9000/v1", "")
    text = "my-very-secret at https://internal:9000/v1 and sk-proj-abc***xyz1 and AIzaSyA1234567890abcdef"
    out = redact(text)
    for leaked in ("my-very-secret", "internal:9000", "sk-proj", "AIzaSy"):
        assert leaked not in out
