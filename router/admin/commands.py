"""``switchboard keys …`` and ``switchboard teams …``: the admin API's key and team operations from
the command line, straight on the config's database (no server needed). Each prints one JSON
object; running servers see the change within a second."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from router.access.secrets import new_key
from router.admin.keys import KeyIn, TeamIn, key_view, team_view, validated
from router.config import Settings
from router.errors import InvalidRequest
from router.store.database import Conflict, Database
from router.store.url import async_url

LIMIT_FLAGS = (
    ("--models", "comma-separated aliases, provider/model names or globs (empty: every model)"),
    ("--rpm", "requests per minute"),
    ("--tpm", "tokens per minute"),
    ("--max-parallel", "requests in flight at once"),
    ("--budget-usd", "budget in USD"),
    ("--budget-period", "daily, weekly, monthly or total (default)"),
)


def add_commands(commands: Any, config_help: str) -> None:
    keys = commands.add_parser("keys", help="create, list, change, rotate and revoke virtual keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    for action in ("create", "update"):
        sub = key_actions.add_parser(action, help=f"{action} a key")
        if action == "update":
            sub.add_argument("id")
        sub.add_argument("--name", required=action == "create")
        sub.add_argument("--team", dest="team_id", help="the team's id")
        sub.add_argument("--expires-at", help="RFC 3339 time, e.g. 2027-01-01T00:00:00Z")
        sub.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
        sub.add_argument("--model-limits", metavar="JSON", help='limits per model, e.g. \'{"gpt-4o*": {"rpm": 10}}\'')
        sub.add_argument("--params", metavar="JSON", help="the key's own parameters, e.g. '{\"max_tokens\": 1024}'")
        if action == "update":
            switch = sub.add_mutually_exclusive_group()
            switch.add_argument("--enable", dest="enabled", action="store_const", const=True)
            switch.add_argument("--disable", dest="enabled", action="store_const", const=False)
        _limit_flags(sub)
        sub.add_argument("--config", help=config_help)
    for action in ("list", "show", "rotate", "revoke"):
        sub = key_actions.add_parser(action, help=f"{action} {'keys' if action == 'list' else 'a key'}")
        if action != "list":
            sub.add_argument("id")
        sub.add_argument("--config", help=config_help)
    teams = commands.add_parser("teams", help="create, list, change and delete teams")
    team_actions = teams.add_subparsers(dest="action", required=True)
    for action in ("create", "update"):
        sub = team_actions.add_parser(action, help=f"{action} a team")
        if action == "update":
            sub.add_argument("id")
        sub.add_argument("--name", required=action == "create")
        sub.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
        _limit_flags(sub)
        sub.add_argument("--config", help=config_help)
    for action in ("list", "show", "delete"):
        sub = team_actions.add_parser(action, help=f"{action} {'teams' if action == 'list' else 'a team'}")
        if action != "list":
            sub.add_argument("id")
        sub.add_argument("--config", help=config_help)


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    for flag, text in LIMIT_FLAGS:
        parser.add_argument(flag, help=text)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The command's exit status: 0 done, 1 refused (the message says why)."""
    try:
        body = asyncio.run(_run(args, settings))
    except (InvalidRequest, Conflict, LookupError) as exc:
        print(f"switchboard: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1
    print(msgspec.json.format(msgspec.json.encode(body), indent=2).decode())
    return 0


async def _run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    config = settings.config
    if not config.auth.master_key:
        print(
            "switchboard: note: auth.master_key is not set, so Switchboard runs open and checks no key",
            file=sys.stderr,
        )
    database = Database(async_url(config.database.url, settings.base_dir))
    try:
        await database.migrate()
        action = (KEY_ACTIONS if args.command == "keys" else TEAM_ACTIONS)[args.action]
        return await action(database, args)
    finally:
        await database.close()


def _fields(args: argparse.Namespace, kind: type[KeyIn] | type[TeamIn]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name in ("name", "team_id", "expires_at", "enabled", "rpm", "tpm", "max_parallel", "budget_usd"):
        value = getattr(args, name, None)
        if value is not None:
            raw[name] = value
    if args.budget_period is not None:
        raw["budget_period"] = args.budget_period
    if args.models is not None:
        raw["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.metadata:
        pairs = [item.partition("=") for item in args.metadata]
        if any(not sep or not name for name, sep, _ in pairs):
            raise InvalidRequest("--metadata takes KEY=VALUE")
        raw["metadata"] = {name: value for name, _, value in pairs}
    for name in ("model_limits", "params"):  # keys only: JSON, as the admin API takes it
        text = getattr(args, name, None)
        if text is not None:
            try:
                raw[name] = msgspec.json.decode(text)
            except msgspec.DecodeError:
                raise InvalidRequest(f"--{name.replace('_', '-')} takes JSON") from None
    _typed(raw)
    try:
        body = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid value: {exc}".replace("$.", "--").replace("_", "-")) from None
    return validated(body)


def _typed(raw: dict[str, Any]) -> None:
    """Command-line strings → the numbers and times the admin API takes."""
    for number in ("rpm", "tpm", "max_parallel"):
        if number in raw:
            raw[number] = _number(raw[number], number, int)
    if "budget_usd" in raw:
        raw["budget_usd"] = _number(raw["budget_usd"], "budget_usd", float)
    if "expires_at" in raw:
        try:
            raw["expires_at"] = datetime.fromisoformat(raw["expires_at"].replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest("--expires-at must be an RFC 3339 time, e.g. 2027-01-01T00:00:00Z") from None


def _number(value: str, name: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise InvalidRequest(f"--{name.replace('_', '-')} takes a number, not '{value}'") from None


async def _key_create(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    key_id, secret, key_hash = new_key()
    return key_view(await database.create_key(key_id, key_hash, _fields(args, KeyIn)), secret)


async def _key_list(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    return {"object": "list", "data": [key_view(k) for k in await database.keys()]}


async def _key_show(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    record = await database.key(args.id)
    if record is None:
        raise LookupError(f"no key with id '{args.id}'")
    return key_view(record)


async def _key_update(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    record = await database.update_key(args.id, _fields(args, KeyIn))
    if record is None:
        raise LookupError(f"no key with id '{args.id}'")
    return key_view(record)


async def _key_rotate(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    current = await database.key(args.id)
    if current is None:
        raise LookupError(f"no key with id '{args.id}'")
    if current.revoked_at is not None:
        raise InvalidRequest(f"the key '{args.id}' is revoked: create a new one")
    _, secret, key_hash = new_key(args.id)
    record = await database.update_key(args.id, {"key_hash": key_hash})
    assert record is not None
    return key_view(record, secret)


async def _key_revoke(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    current = await database.key(args.id)
    if current is None:
        raise LookupError(f"no key with id '{args.id}'")
    record = await database.update_key(args.id, {"revoked_at": current.revoked_at or datetime.now(UTC)})
    assert record is not None
    return key_view(record)


async def _team_create(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    return team_view(await database.create_team(_fields(args, TeamIn)))


async def _team_list(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    return {"object": "list", "data": [team_view(t) for t in await database.teams()]}


async def _team_show(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    record = await database.team(args.id)
    if record is None:
        raise LookupError(f"no team with id '{args.id}'")
    return team_view(record)


async def _team_update(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    record = await database.update_team(args.id, _fields(args, TeamIn))
    if record is None:
        raise LookupError(f"no team with id '{args.id}'")
    return team_view(record)


async def _team_delete(database: Database, args: argparse.Namespace) -> dict[str, Any]:
    if not await database.delete_team(args.id):
        raise LookupError(f"no team with id '{args.id}'")
    return {"id": args.id, "object": "team", "deleted": True}


Action = Callable[[Database, argparse.Namespace], Awaitable[dict[str, Any]]]
KEY_ACTIONS: dict[str, Action] = {
    "create": _key_create,
    "list": _key_list,
    "show": _key_show,
    "update": _key_update,
    "rotate": _key_rotate,
    "revoke": _key_revoke,
}
TEAM_ACTIONS: dict[str, Action] = {
    "create": _team_create,
    "list": _team_list,
    "show": _team_show,
    "update": _team_update,
    "delete": _team_delete,
}
