"""The parts of a running app that follow its config, and swapping them for a new config without a
restart (``switchboard reload``, or SIGHUP).

A request reads ``state.gateway`` once, when it starts, so one in flight finishes on the config it
started with while new ones get the new one. What is kept across a reload: each provider whose
settings did not change (its connection pool), each target whose breaker settings and limit did
not change (its breaker, counts and requests in flight), the process-wide bulkhead and the
balancer's random source. A replaced provider's connections are closed once no request can still
be using them (``timeouts.total_s`` later). An invalid new config changes nothing: its errors are
logged and the old one stays. Some sections are read once at start (``RESTART_ONLY``): a change
there is logged as needing a restart, and the rest is applied.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Final

import httpx
import msgspec
from litestar.datastructures import State

from providers.schema import ModelCard, ModelList
from router.config import Config, ConfigError, Settings, load_settings
from router.gateway.failover import Gateway
from router.gateway.routing import Router
from router.resilience.breaker import Clock
from router.resilience.bulkhead import Bulkhead
from router.resilience.retry import RetryPolicy, Sleep
from router.resilience.targets import TargetRegistry, registry_from_config
from router.state.redis_breakers import BreakerSync
from router.telemetry.metrics import Names
from router.upstreams.registry import Upstream, build_upstream, close_upstreams

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode

RESTART_ONLY: Final = ("server", "auth", "database", "state", "keys", "responses", "pricing")


def configured_targets(config: Config) -> list[str]:
    return [f"{t.provider}/{t.model}" for m in config.models.values() for t in m.targets]


def routing_state(config: Config) -> dict[str, object]:
    """What the request handlers read from ``app.state`` that comes from the config."""
    models = ModelList(data=[ModelCard(id=alias) for alias in config.models])
    return {
        "models_json": _encode(models),
        "aliases": list(config.models),
        "alias_set": frozenset(config.models),
        "policies": {alias: model.params for alias, model in config.models.items() if model.params is not None},
        "keepalive_s": config.streams.keepalive_s,
        "streams": config.streams,
    }


def build_gateway(
    config: Config,
    upstreams: Mapping[str, Upstream],
    targets: TargetRegistry,
    sleep: Sleep,
    rng: random.Random,
    bulkhead: Bulkhead,
) -> Gateway:
    resilience = config.resilience
    return Gateway(
        Router(config),
        upstreams,
        resilience.timeouts,
        targets,
        RetryPolicy(resilience.retry, sleep),
        rng,
        bulkhead,
        max_answer_bytes=resilience.max_answer_bytes,
        max_event_bytes=resilience.max_event_bytes,
    )


def restart_needed(old: Config, new: Config) -> list[str]:
    """The sections read once at start that the new config changes."""
    changed = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
    if old.resilience.breaker.shared != new.resilience.breaker.shared:
        changed.append("resilience.breaker.shared")
    return changed


class Reloader:
    """Owns the app's config-following parts after start: ``reload()`` reads the config file
    again and swaps them; ``close()`` closes every provider it retired."""

    def __init__(
        self,
        state: State,
        settings: Settings,
        path: str | None,
        *,
        clock: Clock,
        sleep: Sleep,
        transport: httpx.AsyncBaseTransport | None,
        sync: BreakerSync | None,
    ) -> None:
        self._state = state
        self.settings = settings
        self._path = path
        self._clock = clock
        self._sleep = sleep
        self._transport = transport
        self._sync = sync
        self._retired: list[Mapping[str, Upstream]] = []
        self._closers: set[asyncio.Task[None]] = set()
        self.reloads = 0

    @property
    def upstreams(self) -> Mapping[str, Upstream]:
        gateway: Gateway = self._state.gateway
        return gateway.upstreams

    def reload(self) -> bool:
        """Read the config file again and apply it; False (and the old config kept) if it is invalid."""
        if self._path is None:
            log.warning("reload: this app was not started from a config file; nothing to reload")
            return False
        try:
            settings = load_settings(self._path)
        except ConfigError as exc:
            log.error("reload: %s is invalid; the running config stays (%d errors):", self._path, len(exc.errors))
            for line in exc.errors:
                log.error("reload:   %s", line)
            return False
        try:
            self.apply(settings)
        except Exception:  # a surprise in building it: nothing was swapped
            log.exception("reload: applying %s failed; the running config stays", self._path)
            return False
        return True

    def apply(self, settings: Settings) -> None:
        old, new = self.settings.config, settings.config
        gateway: Gateway = self._state.gateway
        upstreams, retired = self._upstreams(settings, gateway.upstreams)
        try:  # everything is built before anything is swapped
            targets = registry_from_config(new, self._clock, self._sync)
            kept = targets.adopt(gateway.targets)
            bulkhead = gateway.bulkhead
            replacement = build_gateway(new, upstreams, targets, self._sleep, gateway.rng, bulkhead)
            routing = routing_state(new)
        except Exception:
            fresh = {name: u for name, u in upstreams.items() if gateway.upstreams.get(name) is not u}
            self._retire(fresh, 0.0)
            raise
        bulkhead.limit = new.resilience.max_concurrent
        if self._sync is not None:
            self._sync.follow(targets)
        configured = configured_targets(new)
        for name, value in routing.items():
            setattr(self._state, name, value)
        self._state.metrics.rename(Names(new.models, configured))
        self._state.stream_logs.configure(new.streams.resume_window_s, new.streams.resume_buffer_bytes)
        self._state.windows.retarget(configured)
        self._state.gateway = replacement  # from here on, new requests take the new config
        self.settings = settings
        self.reloads += 1
        if retired:
            self._retire(retired, old.resilience.timeouts.total_s)
        log.warning(
            "reload: config applied from %s: %d models, %d providers (%d unchanged); "
            "breaker state kept for %d of %d targets",
            self._path,
            len(new.models),
            len(upstreams),
            len(upstreams) - sum(1 for name in upstreams if upstreams[name] is not gateway.upstreams.get(name)),
            kept,
            len(set(configured)),
        )
        restart = restart_needed(old, new)
        if restart:
            log.warning("reload: %s changed: that takes a restart; the running values stay", ", ".join(restart))

    def _upstreams(
        self, settings: Settings, current: Mapping[str, Upstream]
    ) -> tuple[dict[str, Upstream], dict[str, Upstream]]:
        """The new config's providers, reusing those whose settings did not change; and the old
        ones not reused."""
        old, new = self.settings, settings
        connect_s = new.config.resilience.timeouts.connect_s
        same_connect = old.config.resilience.timeouts.connect_s == connect_s
        upstreams: dict[str, Upstream] = {}
        for name, cfg in new.config.providers.items():
            previous = current.get(name)
            unchanged = (
                previous is not None
                and same_connect
                and old.config.providers.get(name) == cfg
                and old.key_vars.get(name, ()) == new.key_vars.get(name, ())
            )
            if unchanged and previous is not None:
                upstreams[name] = previous
            else:
                key_vars = new.key_vars.get(name, ())
                upstreams[name] = build_upstream(
                    name, cfg, key_vars=key_vars, connect_timeout_s=connect_s, transport=self._transport
                )
        retired = {name: u for name, u in current.items() if upstreams.get(name) is not u}
        return upstreams, retired

    def _retire(self, retired: Mapping[str, Upstream], after_s: float) -> None:
        """Close ``retired`` once no request can still be using it."""
        self._retired.append(retired)

        async def close_later() -> None:
            await asyncio.sleep(after_s)
            if retired in self._retired:
                self._retired.remove(retired)
                try:
                    await close_upstreams(self._unused(retired))
                except Exception:
                    log.warning("reload: closing a retired provider failed", exc_info=True)

        task = asyncio.get_running_loop().create_task(close_later())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def close(self) -> None:
        """At shutdown: every retired provider closed now."""
        for task in list(self._closers):
            task.cancel()
        if self._closers:
            await asyncio.wait(list(self._closers))
        for retired in self._retired:
            await close_upstreams(self._unused(retired))
        self._retired.clear()

    def _unused(self, retired: Mapping[str, Upstream]) -> dict[str, Upstream]:
        """Those of ``retired`` whose transport no current provider shares (the tests' one)."""
        current = {id(u.transport) for u in self.upstreams.values()}
        return {name: u for name, u in retired.items() if id(u.transport) not in current}
