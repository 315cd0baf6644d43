"""``switchboard serve | check | reload | keys | teams | --version`` (also ``python -m router``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from types import FrameType
from typing import Final, TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from router.admin.commands import add_commands
from router.admin.commands import run as run_admin_command
from router.config import ConfigError, Settings, default_config_path, load_settings, multiplied_limits
from router.gateway.routing import Router
from router.lifecycle.workers import RUN_DIR_ENV, prepare, run_dir, serving, signal_reload
from router.store.database import Database
from router.store.url import async_url
from router.telemetry.export import export_interval_s, metric_exporter_from_env
from router.telemetry.logs import configure as configure_logging
from router.telemetry.metrics import METRICS_DIR_ENV
from router.telemetry.tracing import tracing_from_env
from router.upstreams.registry import Upstream, build_upstreams

SIGPIPE_STATUS: Final = 141  # what a shell reports for a writer killed by SIGPIPE, as `cat` would be


def version() -> str:
    try:
        return metadata.version("switchboard")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="OpenAI-compatible LLM gateway")
    parser.add_argument("--version", action="version", version=f"switchboard {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    config_help = "config file (default: $SWITCHBOARD_CONFIG, then ./config.yaml)"
    serve = commands.add_parser("serve", help="start the proxy")
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--host", help="bind address (default: server.host from the config)")
    serve.add_argument("--port", type=int, help="port (default: server.port from the config)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers from the config)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        choices=["json", "text"],
        help="json (one object per line) or text; default: text on a terminal, json otherwise",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    check = commands.add_parser("check", help="validate the config and print the route table")
    check.add_argument("--config", help=config_help)
    reload = commands.add_parser(
        "reload", help="check the config, then have the server on its port apply it without a restart"
    )
    reload.add_argument("--config", help=config_help)
    reload.add_argument("--port", type=int, help="the server's port (default: server.port from the config)")
    add_commands(commands, config_help)
    return parser


def describe(settings: Settings, upstreams: dict[str, Upstream], out: TextIO) -> None:
    """The route table: providers and why any is unavailable, then each model's targets."""
    config = settings.config
    print("providers:", file=out)
    for name, upstream in upstreams.items():
        state = f"unavailable — {upstream.unavailable}" if upstream.unavailable else "available"
        print(f"  {name:<16} {upstream.kind:<10} {state}", file=out)
    if config.auth.master_key:
        print(f"auth: master key set; keys and teams in {_database(config.database.url)}", file=out)
    else:
        print(
            "auth: OPEN — no master key (auth.master_key / SWITCHBOARD_MASTER_KEY): anyone who reaches "
            "Switchboard spends its provider keys",
            file=out,
        )
    print("models:", file=out)
    for alias, route in Router(config).routes.items():
        targets = ", ".join(
            t.label + (" (unavailable)" if upstreams[t.provider].unavailable else "") for t in route.targets
        )
        fallbacks = f"  fallbacks: {', '.join(route.fallbacks)}" if route.fallbacks else ""
        print(f"  {alias:<24} → {targets}{fallbacks}", file=out)
        models = sorted({t.model for t in route.targets})
        if len(models) > 1:  # vectors from different models are not interchangeable
            print(
                f"  {'':<24}   not for /v1/embeddings: its targets serve different models ({', '.join(models)})",
                file=out,
            )


def _database(url: str) -> str:
    """The database's address without its password or query (which may hold one)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "(an invalid database.url)"
    return parsed.set(query={}).render_as_string(hide_password=True)


def _check(path: str) -> int:
    settings = load_settings(path)
    print(f"{path}: valid")
    describe(settings, dict(build_upstreams(settings)), sys.stdout)
    return 0


def _serve(args: argparse.Namespace, path: str) -> int:
    settings = load_settings(path)  # fail here, once, rather than in every worker
    _check_otel_env()
    server = settings.config.server
    os.environ["SWITCHBOARD_CONFIG"] = os.path.abspath(path)
    # Worker processes start afresh: they set up logging from these, in app_from_env.
    os.environ["SWITCHBOARD_LOG_LEVEL"] = args.log_level
    os.environ["SWITCHBOARD_LOG_FORMAT"] = args.log_format or ("text" if sys.stderr.isatty() else "json")
    configure_logging(os.environ["SWITCHBOARD_LOG_LEVEL"], os.environ["SWITCHBOARD_LOG_FORMAT"])
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    workers = args.workers or server.workers
    problem = multiplied_limits(workers, settings.config.auth, settings.config.state)
    if problem:  # refused before anything is touched
        raise ConfigError(f"--workers {workers}: {problem}")
    if settings.config.auth.master_key:
        asyncio.run(_migrate(settings))  # once, here, not racing in every worker
    running = run_dir(port)
    prepare(running)
    os.environ[RUN_DIR_ENV] = str(running)  # each worker notes its pid there, for `switchboard reload`
    print(f"switchboard: serving {path} on http://{host}:{port}/v1", file=sys.stderr)
    shared = None
    if workers > 1:  # the workers leave their metrics here, so one scrape reports them all
        shared = tempfile.mkdtemp(prefix="switchboard-metrics-")
        os.environ[METRICS_DIR_ENV] = shared
    # uvicorn ends its shutdown by raising the signal that started it again, with the handler it
    # found: the default one would kill the process before its last log lines are written. This
    # one writes them, then lets the signal end the process as it would have.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit_on)
    try:
        _run_uvicorn(args, settings, host, port, workers)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    return 0


def _exit_on(signum: int, frame: FrameType | None) -> None:
    """End as the signal would have ended the process, once the log lines held back are out."""
    logging.shutdown()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _reload(args: argparse.Namespace, path: str) -> int:
    """Validate first: a config the server would refuse is reported here and never sent."""
    settings = load_settings(path)
    port = args.port if args.port is not None else settings.config.server.port
    pids = serving(run_dir(port))
    if not pids:
        print(f"switchboard: no server of this user is serving port {port}", file=sys.stderr)
        return 1
    signal_reload(pids)
    print(
        f"switchboard: {path} is valid; sent to the {len(pids)} process(es) serving port {port} "
        "(each logs what it applied)",
        file=sys.stderr,
    )
    return 0


async def _migrate(settings: Settings) -> None:
    database = Database(async_url(settings.config.database.url, settings.base_dir))
    try:
        await database.migrate()
    finally:
        await database.close()


def _check_otel_env() -> None:
    """A wrong ``OTEL_*`` variable stops the server here, once, not in every worker."""
    tracing = tracing_from_env()
    if tracing is not None:
        tracing.shutdown()
    exporter = metric_exporter_from_env()
    if exporter is not None:
        export_interval_s()
        exporter.shutdown()


def _run_uvicorn(args: argparse.Namespace, settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    from router.api.protocol import http_protocol

    uvicorn.run(
        "router.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=http_protocol(settings.config.server),  # httptools with header limits and client timeouts
        log_level=args.log_level,
        log_config=None,  # uvicorn's lines go through the same handler and format as Switchboard's
        access_log=args.access_log,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )


def _report(error: ConfigError) -> None:
    if len(error.errors) == 1:
        print(f"switchboard: invalid config: {error}", file=sys.stderr)
        return
    print(f"switchboard: invalid config ({len(error.errors)} errors):", file=sys.stderr)
    for line in error.errors:
        print(f"  {line}", file=sys.stderr)


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "info"), "text")
    path = args.config or default_config_path()
    try:
        if args.command == "check":
            return _check(path)
        if args.command == "reload":
            return _reload(args, path)
        if args.command in ("keys", "teams"):
            return run_admin_command(args, load_settings(path))
        return _serve(args, path)
    except ConfigError as exc:
        _report(exc)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe must fail here, where it is caught, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`switchboard check | head -1`): nothing is wrong, and nobody is left
        # to tell. Point stdout at /dev/null so that Python's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_STATUS
