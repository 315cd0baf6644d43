"""Structured logs: one line per request from its ``Outcome``, and one format (JSON or text) for
every line Switchboard logs. No line carries a key or message content: an Outcome holds neither,
and upstream messages in it were redacted where they were received."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
import time
from typing import Any, Final

import msgspec

from router.gateway.outcome import Outcome

REQUEST_LOGGER: Final = "switchboard.requests"
_encode = msgspec.json.Encoder().encode


def _failures(outcome: Outcome) -> list[str] | None:
    return [f"{a.target}:{a.error}" for a in outcome.attempts if a.result not in ("ok", "skipped")] or None


def _skipped(outcome: Outcome) -> list[str] | None:
    return [f"{a.target}:{a.error}" for a in outcome.attempts if a.result == "skipped"] or None


def request_fields(outcome: Outcome) -> dict[str, Any]:
    """The per-request line's fields (a contract: dashboards parse them)."""
    usage = outcome.usage
    return {
        "request_id": outcome.request_id,
        "alias": outcome.alias,
        "target": outcome.target,
        "status": outcome.status,
        "code": outcome.code,
        "stream": outcome.stream,
        "attempts": sum(1 for a in outcome.attempts if a.result != "skipped"),
        "latency_ms": round(outcome.duration_s * 1000, 2),
        "ttft_ms": round(outcome.ttft_s * 1000, 2) if outcome.ttft_s is not None else None,
        "prompt_tokens": usage.prompt if usage is not None else None,
        "completion_tokens": usage.completion if usage is not None else None,
        "cached_tokens": usage.cached if usage is not None else None,
        "reasoning_tokens": usage.reasoning if usage is not None else None,
        "cost_usd": outcome.cost_usd,
        "finish_reason": outcome.finish_reason,
        "client_disconnected": outcome.client_disconnected,
        "failures": _failures(outcome),
        "skipped": _skipped(outcome),
    }


class RequestLine(msgspec.Struct, gc=False):
    """The JSON request line as ``JSONFormatter`` writes it, field for field, encoded in one step."""

    ts: str
    level: str
    logger: str
    message: str
    request_id: str
    alias: str | None
    target: str | None
    status: int
    code: str | None
    stream: bool
    attempts: int
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None
    finish_reason: str | None
    client_disconnected: bool
    failures: list[str] | None
    skipped: list[str] | None


def request_line(outcome: Outcome, ts: str, logger: str) -> RequestLine:
    usage = outcome.usage
    attempts = outcome.attempts
    plain = all(a.result == "ok" for a in attempts)  # the common case: nothing failed or skipped
    return RequestLine(
        ts,
        "info",
        logger,
        "request",
        outcome.request_id,
        outcome.alias,
        outcome.target,
        outcome.status,
        outcome.code,
        outcome.stream,
        len(attempts) if plain else sum(1 for a in attempts if a.result != "skipped"),
        round(outcome.duration_s * 1000, 2),
        round(outcome.ttft_s * 1000, 2) if outcome.ttft_s is not None else None,
        usage.prompt if usage is not None else None,
        usage.completion if usage is not None else None,
        usage.cached if usage is not None else None,
        usage.reasoning if usage is not None else None,
        outcome.cost_usd,
        outcome.finish_reason,
        outcome.client_disconnected,
        None if plain else _failures(outcome),
        None if plain else _skipped(outcome),
    )


class RequestLog:
    """The Outcome listener that writes the per-request line (at INFO on ``switchboard.requests``).

    Where the line would end in Switchboard's own JSON handler anyway (the logger and the root
    filter nothing, and the root's one handler is ``LazyFlushHandler`` with ``JSONFormatter``),
    it is encoded straight into that handler: no ``LogRecord``, no dictionary, no str round trip
    (a third of the line's cost). Any other logging setup gets an ordinary record."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(REQUEST_LOGGER)

    def __call__(self, outcome: Outcome) -> None:
        log = self._log
        if not log.isEnabledFor(logging.INFO):
            return
        handler = self._direct()
        if handler is not None:
            formatter = handler.formatter
            assert isinstance(formatter, JSONFormatter)
            with handler.lock or contextlib.nullcontext():  # as logging holds it around emit
                line = _encode(request_line(outcome, formatter.stamp(time.time()), log.name)) + b"\n"
                handler.append(line)
            return
        record = log.makeRecord(
            log.name, logging.INFO, "", 0, "request", (), None, extra={"fields": request_fields(outcome)}
        )
        log.handle(record)

    def _direct(self) -> LazyFlushHandler | None:
        log = self._log
        if log.handlers or log.filters or not log.propagate or log.parent is not logging.root:
            return None
        root = logging.root
        handlers = root.handlers
        if len(handlers) != 1 or root.filters:
            return None
        handler = handlers[0]
        if (
            type(handler) is LazyFlushHandler
            and type(handler.formatter) is JSONFormatter
            and handler.level <= logging.INFO
            and not handler.filters
        ):
            return handler
        return None


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a record's ``fields``."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""  # the current second, formatted once

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


class TextFormatter(logging.Formatter):
    """For people at a terminal: the usual line, then a record's ``fields`` as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return text


class LazyFlushHandler(logging.Handler):
    """Collects whole lines and writes them to stderr every ``FLUSH_S`` (from a thread) in writes
    of at most ``PIPE_BUF`` bytes that end on a line, instead of a system call per line: a line per
    request must not cost one, and the workers sharing one stderr pipe must not split each
    other's lines (a pipe write up to PIPE_BUF is atomic). Under a test's captured stderr, which
    has no file, lines go to it as they come."""

    FLUSH_S: Final = 0.2

    def __init__(self) -> None:
        super().__init__()
        try:
            self._fd: int | None = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._fd = None
        self._pending: list[bytes] = []
        self._stop = threading.Event()
        if self._fd is not None:
            threading.Thread(target=self._flush_forever, name="log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if self._fd is None:
            sys.stderr.write(line)
            return
        self._pending.append(line.encode("utf-8", "backslashreplace"))  # list.append is atomic

    def append(self, line: bytes) -> None:
        """A whole line, already formatted and encoded (``RequestLog``'s direct path)."""
        if self._fd is None:
            sys.stderr.write(line.decode())
            return
        self._pending.append(line)

    def _flush_forever(self) -> None:
        while not self._stop.wait(self.FLUSH_S):
            self.flush()

    def flush(self) -> None:
        if self._fd is None or not self._pending:
            return
        with self.lock or contextlib.nullcontext():
            lines, self._pending = self._pending, []
            chunk: list[bytes] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > select.PIPE_BUF:
                    self._write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        with contextlib.suppress(OSError):  # stderr closed under us at exit: nothing to tell
            while data:
                data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


def configure(level: str, fmt: str) -> None:
    """The root handler every Switchboard line goes through (the CLI calls this once)."""
    # No line uses the thread or process names: not worth looking up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = LazyFlushHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
