"""``create_app(settings)`` → the Litestar app. The lifespan owns the transports and the gateway."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from providers.errors import SwitchboardError
from router.access.guard import Guard
from router.admin.keys import ROUTES as ADMIN_ROUTES
from router.admin.openapi import admin_openapi
from router.admin.targets import list_targets
from router.admin.usage import usage_report
from router.api.chat import chat_completions
from router.api.completions import legacy_completions
from router.api.drain import Drain
from router.api.embeddings import embeddings
from router.api.handoff import Takeovers
from router.api.health import live, ready
from router.api.messages import count_tokens, create_message
from router.api.metrics import metrics_endpoint
from router.api.models import list_models, retrieve_model
from router.api.openai_responses import create_response, delete_response, retrieve_response
from router.api.responses import request_id_of
from router.api.resumable import resume_stream
from router.config import Config, Settings, default_config_path, load_settings
from router.config_schema import CORSConfig as CORSSettings
from router.errors import (
    AllTargetsFailed,
    ClientError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    Refused,
    RouteNotFound,
    ShuttingDown,
    encode_error,
    internal_error,
)
from router.gateway.balancing import seeded_random
from router.gateway.outcome import Outcomes, Pricer
from router.gateway.pricing import Pricing
from router.lifecycle import signals, workers
from router.lifecycle.reload import Reloader, build_gateway, configured_targets, routing_state
from router.resilience.breaker import Clock, utc_now
from router.resilience.bulkhead import Bulkhead
from router.resilience.retry import Sleep
from router.resilience.targets import registry_from_config
from router.state.redis_breakers import BreakerSync
from router.state.stream_logs import MemoryStreamLogs, RedisStreamLogs
from router.store.database import Database
from router.store.responses import ResponseStore
from router.store.url import async_url
from router.telemetry.export import MetricExport, export_interval_s, metric_exporter_from_env
from router.telemetry.logs import RequestLog
from router.telemetry.logs import configure as configure_logging
from router.telemetry.metrics import METRICS_DIR_ENV, Metrics, Names, breaker_gauge, breaker_transitions
from router.telemetry.spans import Tracing
from router.telemetry.tracing import tracing_from_env
from router.telemetry.windows import TargetWindows
from router.upstreams.registry import build_upstreams, close_upstreams

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
JSON: Final = "application/json"
ATTEMPTS_HEADER: Final = "x-switchboard-attempts"
# The collector's young-generation threshold while serving (Python's default is 700). A finished
# request leaves no cycles, so the count of live container objects only swings with the requests
# in flight; at 700 those swings alone started a collection every few requests, each traversing the
# in-flight requests' objects and promoting them to be traversed again (40-100 us of CPU a request
# at 64 in flight). At 20,000 a steady load collects almost never; a collection that does run
# holds the loop a few ms, as the older generations' collections already did.
GC_YOUNG_THRESHOLD: Final = 20_000


def error_response(exc: SwitchboardError, request: Request[Any, Any, State]) -> Response[bytes]:
    rid = request_id_of(request.scope)
    headers = {"x-request-id": rid}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, AllTargetsFailed):
        headers[ATTEMPTS_HEADER] = str(exc.calls)
    if isinstance(exc, Refused):
        headers.update(exc.headers)
    if isinstance(exc, ShuttingDown):
        headers["connection"] = "close"  # the client's next request opens a connection elsewhere
    return Response(encode_error(exc, rid), status_code=exc.status, media_type=JSON, headers=headers)


def _on_switchboard_error(request: Request[Any, Any, State], exc: SwitchboardError) -> Response[bytes]:
    return error_response(exc, request)


def _on_http_exception(request: Request[Any, Any, State], exc: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (unknown route, wrong method, body too large) in OpenAI's shape."""
    status = exc.status_code
    error: ClientError
    if status == 404:
        error = RouteNotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    elif status == 405:
        error = MethodNotAllowed(f"Method {request.method} is not allowed for {request.url.path}.")
    elif status == 413:
        limit = request.app.state.max_body_bytes
        error = PayloadTooLarge(f"The request body is larger than this gateway accepts ({limit} bytes).")
    else:
        error = InvalidRequest(str(exc.detail), status=status)
    if status >= HTTP_500_INTERNAL_SERVER_ERROR:
        return error_response(internal_error(), request)
    return error_response(error, request)


def _on_unexpected(request: Request[Any, Any, State], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", exc_info=exc)
    return error_response(internal_error(), request)


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    seed: int | None = None,
    metrics_dir: Path | None = None,
    tracing: Tracing | None = None,
    metric_export: MetricExport | None = None,
    config_path: str | None = None,
    handle_signals: bool = False,
    run_dir: Path | None = None,
) -> Litestar:
    """The tests' seams: ``transport`` replaces the network for every HTTP provider, ``clock``
    drives the breakers, ``sleep`` the retry waits, ``seed`` the load balancer's choices.
    ``config_path`` is the file a reload reads again; ``handle_signals`` (the server's own
    process only) makes SIGTERM drain and SIGHUP reload; ``run_dir`` is where it notes its pid
    for ``switchboard reload``."""
    config = settings.config
    resilience = config.resilience

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        guard = await _guard(settings, app.state.outcomes.pricing)
        app.state.guard = guard
        if guard.ledger is not None:
            app.state.outcomes.listeners.append(guard.ledger)  # spend, from every request's record
        streams = config.streams
        app.state.stream_logs = (
            RedisStreamLogs(
                config.state.url,
                config.state.timeout_s,
                streams.resume_window_s,
                streams.resume_buffer_bytes,
                resilience.timeouts.total_s,
            )
            if config.state.backend == "redis"
            else MemoryStreamLogs(streams.resume_window_s, streams.resume_buffer_bytes)
        )
        response_store = ResponseStore(guard.database, config.responses.store_ttl_s)
        await response_store.start()
        app.state.response_store = response_store
        upstreams = build_upstreams(settings, transport)
        # resilience.breaker.shared: every worker and replica follows one picture of each breaker.
        sync = BreakerSync(config.state.url, config.state.timeout_s) if resilience.breaker.shared else None
        targets = registry_from_config(config, clock, sync)
        if sync is not None:
            await sync.start(targets)
        bulkhead = Bulkhead(resilience.max_concurrent)
        app.state.gateway = build_gateway(config, upstreams, targets, sleep, seeded_random(seed), bulkhead)
        takeovers = app.state.takeovers = Takeovers(app)  # streams other replicas handed off
        reloader = Reloader(app.state, settings, config_path, clock=clock, sleep=sleep, transport=transport, sync=sync)
        app.state.reloader = reloader
        drain: Drain = app.state.drain
        app.state.outcomes.pricing.warm()
        metrics: Metrics = app.state.metrics
        state = app.state
        metrics.live = lambda: {
            "switchboard_active_streams": {(): float(bulkhead.streams)},
            "switchboard_breaker_state": breaker_gauge(state.gateway.targets.states(), metrics.names),
            "switchboard_breaker_transitions": breaker_transitions(state.gateway.targets.transitions(), metrics.names),
            "switchboard_state_errors": {
                (): float((guard.shared.errors if guard.shared is not None else 0) + (sync.errors if sync else 0))
            },
        }
        metrics.start()
        # Everything alive now (the app, the price table's thousands of objects) lives as long as
        # the process: out of the collector's sight, it is not traversed again on every collection.
        gc.freeze()
        young = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD)
        restore = signals.install(drain.begin, lambda: drain.draining, reloader.reload) if handle_signals else None
        unregister = workers.register(run_dir) if run_dir is not None else None
        try:
            yield
        finally:
            gc.set_threshold(*young)
            if unregister is not None:
                unregister()
            if restore is not None:
                restore()
            try:
                await drain.close()
                await takeovers.close()
                await metrics.stop()
            finally:
                await close_upstreams(state.gateway.upstreams)
                await reloader.close()
                if sync is not None:
                    await sync.close()
                await response_store.stop()
                await app.state.stream_logs.close()
                await guard.stop()
                if guard.database is not None:
                    await guard.database.close()
                if tracing is not None:
                    tracing.shutdown()  # exports what is still batched
                for handler in logging.getLogger().handlers:
                    handler.flush()  # the server may end the process by a signal next: nothing held back

    return Litestar(
        route_handlers=[
            chat_completions,
            embeddings,
            legacy_completions,
            create_message,
            count_tokens,
            create_response,
            resume_stream,
            retrieve_response,
            delete_response,
            list_models,
            retrieve_model,
            live,
            ready,
            list_targets,
            metrics_endpoint,
            usage_report,
            admin_openapi,
            *ADMIN_ROUTES,
        ],
        lifespan=[lifespan],
        exception_handlers={
            SwitchboardError: _on_switchboard_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
        state=State(_initial_state(config, metrics_dir, tracing, metric_export)),
        request_max_body_size=config.server.max_body_bytes,
        cors_config=_cors(config.server.cors),
        openapi_config=None,
        logging_config=None,  # logging is the CLI's (and the tests') to set up, not the app's
        debug=False,
    )


# What a browser's script may read of an answer: the request id, the rate-limit state, the route.
EXPOSED_HEADERS: Final = (
    "x-request-id",
    "retry-after",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-switchboard-target",
    "x-switchboard-attempts",
    "x-switchboard-dropped-params",
    "x-switchboard-stream-id",
)


def _cors(cors: CORSSettings) -> CORSConfig | None:
    """Litestar's CORS middleware, only when origins are configured (it costs every request)."""
    if not cors.allow_origins:
        return None
    return CORSConfig(
        allow_origins=list(cors.allow_origins),
        allow_methods=[m.upper() for m in cors.allow_methods],  # type: ignore[misc]
        allow_headers=list(cors.allow_headers),
        allow_credentials=cors.allow_credentials,
        expose_headers=list(EXPOSED_HEADERS),
        max_age=cors.max_age_s,
    )


async def _guard(settings: Settings, pricing: Pricer) -> Guard:
    """Keys from the database (created and migrated here on first start) when a master key is set;
    otherwise Switchboard runs open, and says so."""
    config = settings.config
    if not config.auth.master_key:
        log.warning(
            "auth: no master key (auth.master_key / SWITCHBOARD_MASTER_KEY): Switchboard runs OPEN, "
            "anyone who reaches it spends the provider keys; the admin API only reads, from loopback"
        )
        return Guard(config, None)
    database = Database(async_url(config.database.url, settings.base_dir))
    log.info("auth: master key set; keys, teams and spend in %s", database.url.render_as_string(hide_password=True))
    try:
        await database.migrate()
        guard = Guard(config, database, pricing)
        await guard.start()
    except BaseException:
        await database.close()
        raise
    return guard


def _initial_state(
    config: Config,
    metrics_dir: Path | None,
    tracing: Tracing | None,
    metric_export: MetricExport | None,
) -> dict[str, object]:
    configured = configured_targets(config)
    metrics = Metrics(Names(config.models, configured), metrics_dir, metric_export)
    windows = TargetWindows(configured)
    return {
        **routing_state(config),
        "windows": windows,
        "tracing": tracing,
        "max_body_bytes": config.server.max_body_bytes,
        "metrics": metrics,
        "outcomes": Outcomes([RequestLog(), metrics.recorder, windows], Pricing(config.pricing)),
        "drain": Drain(config.server.drain_s),
    }


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory`` (used by ``switchboard serve``, one per worker)."""
    if fmt := os.environ.get("SWITCHBOARD_LOG_FORMAT"):
        configure_logging(os.environ.get("SWITCHBOARD_LOG_LEVEL", "info"), fmt)
    shared = os.environ.get(METRICS_DIR_ENV)
    exporter = metric_exporter_from_env()
    path = default_config_path(os.environ)
    running = os.environ.get(workers.RUN_DIR_ENV)
    return create_app(
        load_settings(path),
        metrics_dir=Path(shared) if shared else None,
        tracing=tracing_from_env(),
        metric_export=MetricExport(exporter, export_interval_s()) if exporter is not None else None,
        config_path=path,
        handle_signals=True,
        run_dir=Path(running) if running else None,
    )
