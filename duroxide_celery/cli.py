"""`duroxide-celery`: operate on the store from a shell (migrate, start, inspect, signal, cancel, rewind, restart,
delete, prune, schedules).

Where the store is:

- `--app MODULE` (or DUROXIDE_APP): your Celery app, named as `celery -A` takes it (`proj`, `proj.celery:app`).
  The CLI uses the store and queue prefix of the app's Runtime (`Runtime(provider, options, app=app)`) and wakes
  workers through the app's broker at once.
- `--db URL` (or DUROXIDE_DB_URL): `sqlite:///path` or `postgresql://...`, with `--schema NAME` (or
  DUROXIDE_DB_SCHEMA) for a PostgreSQL schema; `--broker URL` (or DUROXIDE_BROKER_URL) wakes workers at once,
  else the recovery sweep delivers the work a little later.

Every command but `db upgrade` checks the store first and never creates one: a `sqlite:///` path with no file,
an empty file, or a PostgreSQL schema or database without duroxide's tables is an error, not a new empty store.
Exit status: 0 success, 1 an operational failure (one line on stderr: unknown instance, finished instance,
unusable store...), 2 a usage error. `--json` prints machine-readable output.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from click.core import ParameterSource
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .client import Client, _check_instance_id
from .errors import (
    CannotDeleteSubOrchestration,
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    OperationTimedOut,
    RewindRefused,
    ScheduleAlreadyExists,
    ScheduleNotFound,
)
from .options import check_queue_prefix
from .providers import PostgresProvider, Provider, SqliteProvider
from .providers.check import StoreNotReady, check_store, describe
from .providers.migrate import VERSION_TABLE, upgrade
from .schedules import OVERLAP_POLICIES
from .tasks.binding import runtime_of
from .tasks.publish import live_publishers
from .types import TERMINAL_STATUSES, InstanceFilter, PruneOptions, Waits

_MANAGEMENT_ERRORS = (
    InstanceNotFound,
    InstanceStillRunning,
    InstanceAlreadyExists,
    CannotDeleteSubOrchestration,
    OperationTimedOut,
    RewindRefused,
    ScheduleNotFound,
    ScheduleAlreadyExists,
)


def _sqlite_file(url: str) -> Path | None:
    """The file a `sqlite:` URL names, resolved as SqliteProvider.open does; None for an in-memory database."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        return None
    text = re.sub(r"^sqlite:(//)?/?", "", url) if not url.startswith("sqlite:////") else url[9:]
    return Path(text.split("?", 1)[0]).expanduser().resolve()


class Ctx:
    """The global options; the store, the app and the client are resolved when a command needs them."""

    def __init__(
        self,
        db: str | None,
        schema: str | None,
        app: str | None,
        broker: str | None,
        prefix: str,
        as_json: bool,
        explicit: set[str],
    ):
        self.db, self.schema, self.app_spec, self.broker, self.prefix = db, schema, app, broker, prefix
        self.json = as_json
        #: Options given on the command line (as opposed to the environment or their defaults).
        self.explicit = explicit
        self._app: Any = None
        self._provider: Provider | None = None

    # -- the Celery app -----------------------------------------------------------------------------------------
    def app(self) -> Any:
        """The `--app` Celery app (imported once), or None."""
        if self.app_spec is None or self._app is not None:
            return self._app
        from celery import Celery
        from celery.app.utils import find_app

        try:
            app = find_app(self.app_spec)
        except (ImportError, AttributeError) as exc:
            raise click.BadParameter(f"cannot load Celery app {self.app_spec!r}: {exc}", param_hint="--app") from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
            raise click.ClickException(
                f"importing Celery app {self.app_spec!r} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(app, Celery):
            raise click.BadParameter(
                f"{self.app_spec!r} is a {type(app).__name__}, not a Celery app", param_hint="--app"
            )
        runtime = runtime_of(app)
        if runtime is not None:
            # The app's Runtime says where its store and queues are; a second answer could only disagree.
            for name, flag in (("db", "--db"), ("schema", "--schema"), ("queue_prefix", "--queue-prefix")):
                if name in self.explicit:
                    raise click.UsageError(f"{flag} cannot be combined with --app: the app's Runtime names its store")
        if "broker" in self.explicit:
            raise click.UsageError("--broker cannot be combined with --app: workers are woken through the app")
        self._app = app
        return app

    def runtime(self) -> Any:
        app = self.app()
        return None if app is None else runtime_of(app)

    # -- the store ----------------------------------------------------------------------------------------------
    def provider(self, create: bool = False) -> Provider:
        """The store's provider. Unless `create` (db upgrade), a SQLite file that does not exist is an error, and
        nothing (file or directory) is created."""
        if self._provider is not None:
            return self._provider
        runtime = self.runtime()
        if runtime is not None:
            provider = runtime.provider
            if isinstance(provider, SqliteProvider):
                self._sqlite_guard(provider.url, create)
        else:
            provider = self._provider_from_options(create)
        self._provider = provider
        return provider

    def _provider_from_options(self, create: bool) -> Provider:
        url = self.db
        if not url:
            raise click.ClickException("no database: pass --db URL or --app MODULE, or set DUROXIDE_DB_URL")
        try:
            if url.startswith("sqlite"):
                if self.schema:
                    raise click.UsageError("--schema is for PostgreSQL; a SQLite database has no schemas")
                self._sqlite_guard(url, create)
                return SqliteProvider.open(url)
            if url.startswith("postgres"):
                if self.schema:
                    try:
                        return PostgresProvider.connect_with_schema(url, self.schema)
                    except ValueError as exc:
                        raise click.BadParameter(str(exc), param_hint="--schema") from None
                return PostgresProvider.connect(url)
        except OSError as exc:
            raise click.ClickException(f"cannot open {url}: {exc}") from None
        raise click.BadParameter(
            f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...", param_hint="--db"
        )

    @staticmethod
    def _sqlite_guard(url: str, create: bool) -> None:
        path = _sqlite_file(url)
        if path is None:
            raise click.ClickException(
                f"{url} is an in-memory database, empty in every process: give a file (sqlite:///path)"
            )
        if not create and not path.exists():
            raise click.ClickException(f"no database file at {path} (run 'duroxide-celery db upgrade' to create one)")

    def close(self) -> None:
        """Close the store's pooled connections (the process may go on: tests, or a program calling main)."""
        if self._provider is not None:
            self._provider.dispose()

    def client(self) -> Client:
        """A Client on a checked store, waking workers through --app or --broker when given."""
        provider = self.provider()
        try:
            _require_existing_store(provider)
            check_store(provider)
        except StoreNotReady as exc:
            raise click.ClickException(str(exc)) from None
        app = self.app()
        if app is None and self.broker:
            from celery import Celery

            app = Celery("duroxide-cli", broker=self.broker, set_as_current=False)
            app.conf.update(task_serializer="json", accept_content=["json"])
        client = Client(provider, app=app, queue_prefix=self.prefix)
        if app is None and live_publishers.get(provider.token) is None:
            # Nothing here can wake a worker: say so in CLI terms (the Client's own warning names Python code).
            client._warned_no_broker = True
            self.no_wake_up = True
        return client

    no_wake_up = False

    def note_no_wake_up(self) -> None:
        """After a write that needs a worker: tell how it will be delivered when no wake-up could be sent."""
        if self.no_wake_up:
            click.echo(
                "note: no --app or --broker: workers pick this up at their next recovery sweep (seconds)", err=True
            )


def _require_existing_store(provider: Provider) -> None:
    """Refuse a store nobody created (a mistyped schema or database), before check_store's first use would create
    it: only `db upgrade` creates stores."""
    where = describe(provider)

    def unusable(reason: object) -> StoreNotReady:
        return StoreNotReady(f"cannot use the duroxide store at {where}: {str(reason).strip().splitlines()[0]}")

    if isinstance(provider, SqliteProvider):
        path = _sqlite_file(provider.url)
        assert path is not None  # in-memory stores are refused before
        try:  # read-only: the provider's own connections would switch the file to WAL, writing to it
            with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
                query = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
                exists = conn.execute(query, (VERSION_TABLE,)).fetchone()[0] > 0
        except sqlite3.Error as exc:
            raise unusable(exc) from exc
    else:
        engine = provider._create_engine()
        try:
            with engine.connect() as conn:
                exists = conn.execute(sa.text(f"SELECT to_regclass('{VERSION_TABLE}')")).scalar() is not None
        except SQLAlchemyError as exc:
            raise unusable(getattr(exc, "orig", None) or exc) from exc
        finally:
            engine.dispose()
    if not exists:
        in_schema = f"schema {provider.schema} of " if provider.schema else ""
        raise StoreNotReady(f"no duroxide store in {in_schema}{where} (run 'duroxide-celery db upgrade' to create one)")


def _store_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn database and management failures into one readable line and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreNotReady as exc:
            raise click.ClickException(str(exc)) from None
        except _MANAGEMENT_ERRORS as exc:
            raise click.ClickException(str(exc)) from None
        except OperationalError as exc:
            raise click.ClickException(f"database unreachable or unusable: {exc.orig}") from None
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {exc}") from None
        except (TypeError, ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from None


def _instance_id_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--id`: absent means a new UUID; an empty, blank or otherwise invalid id is a usage error."""
    if value is None:
        return None
    try:
        return _check_instance_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_AGE = re.compile(r"^(\d+)\s*(ms|s|m|h|d|w)$")
_AGE_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class When(click.ParamType):
    """A point in time as epoch milliseconds: an integer (epoch ms), an ISO-8601 time (UTC unless it has an
    offset), or an age such as 30m, 12h, 7d (that long ago)."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        age = _AGE.match(text)
        if age:
            return int(time.time() * 1000) - int(age.group(1)) * _AGE_MS[age.group(2)]
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is not epoch ms, an ISO-8601 time or an age like 7d, 12h, 30m", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _require_instance(client: Client, instance_id: str) -> Any:
    info = client.get_instance_info(instance_id, include_waits=False)
    if info is None:
        raise click.ClickException(f"no instance {instance_id!r}")
    return info


def _require_running(client: Client, instance_id: str, what: str) -> Any:
    info = _require_instance(client, instance_id)
    if info.status in TERMINAL_STATUSES:
        raise click.ClickException(f"instance {instance_id} is {info.status}: {what}")
    return info


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (same as the global --json).")(fn)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def _rows(rows: list[tuple[str, Any]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _checked_prefix(value: str) -> str:
    try:
        return check_queue_prefix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--queue-prefix") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--app",
    "-A",
    "app",
    envvar="DUROXIDE_APP",
    metavar="MODULE",
    help="Your Celery app, as `celery -A` takes it; its Runtime names the store (or DUROXIDE_APP).",
)
@click.option("--db", envvar="DUROXIDE_DB_URL", metavar="URL", help="Database URL (or DUROXIDE_DB_URL).")
@click.option(
    "--schema",
    envvar="DUROXIDE_DB_SCHEMA",
    metavar="NAME",
    help="PostgreSQL schema of the store (or DUROXIDE_DB_SCHEMA).",
)
@click.option(
    "--broker",
    envvar="DUROXIDE_BROKER_URL",
    metavar="URL",
    help="Celery broker URL, to wake workers at once (or DUROXIDE_BROKER_URL).",
)
@click.option(
    "--queue-prefix",
    envvar="DUROXIDE_QUEUE_PREFIX",
    default="duroxide",
    show_default=True,
    callback=lambda ctx, param, value: _checked_prefix(value),
    help="Queue name prefix of the workers, with --broker (or DUROXIDE_QUEUE_PREFIX).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (status, list, history, tree, metrics, ...).")
@click.pass_context
def main(
    ctx: click.Context,
    app: str | None,
    db: str | None,
    schema: str | None,
    broker: str | None,
    queue_prefix: str,
    as_json: bool,
) -> None:
    """Operate duroxide-celery orchestrations."""
    explicit = {
        name
        for name in ("app", "db", "schema", "broker", "queue_prefix")
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }
    ctx.obj = Ctx(db or None, schema or None, app or None, broker or None, queue_prefix, as_json, explicit)
    ctx.call_on_close(ctx.obj.close)


@main.group()
def db() -> None:
    """Schema management."""


@db.command("upgrade")
@click.pass_obj
@_store_errors
def db_upgrade(obj: Ctx) -> None:
    """Create or migrate the schema to the newest revision (creates a SQLite file if missing)."""
    provider = obj.provider(create=True)
    engine = provider._create_engine()
    try:
        upgrade(engine, provider.schema)
    finally:
        engine.dispose()
    click.echo("schema is up to date")


@main.command()
@click.argument("name")
@click.option("--id", "instance_id", callback=_instance_id_option, help="Instance id (default: a new UUID).")
@click.option("--input", "input_json", help="Input as JSON.")
@click.option("--version", help="Pin an exact orchestration version.")
@click.option(
    "--if-exists",
    type=click.Choice(["fail", "keep", "restart_if_finished"]),
    default="fail",
    show_default=True,
    help="When the id exists: fail (exit 1), keep it (start nothing, exit 0), or restart_if_finished (a "
    "Completed or Failed instance gets a fresh execution; a running one is kept).",
)
@_json_option
@click.pass_obj
@_store_errors
def start(
    obj: Ctx,
    name: str,
    instance_id: str | None,
    input_json: str | None,
    version: str | None,
    if_exists: str,
    as_json: bool,
) -> None:
    """Start orchestration NAME; prints the instance id (--json: id, outcome, execution)."""
    import uuid

    value = _json_arg(input_json, "--input")
    client = obj.client()
    instance_id = instance_id or str(uuid.uuid4())
    try:
        if version:
            result = client.start_orchestration_versioned(instance_id, name, value, version, if_exists=if_exists)
        else:
            result = client.start_orchestration(instance_id, name, value, if_exists=if_exists)
    except InstanceAlreadyExists:
        info = client.get_instance_info(instance_id, include_waits=False)
        status = info.status if info is not None else "deleted meanwhile"
        raise click.ClickException(f"instance {instance_id} already exists (status {status})") from None
    if as_json or obj.json:
        _emit_json({"instance_id": instance_id, "outcome": result.outcome, "execution_id": result.execution_id})
    else:
        click.echo(instance_id)
        if result.outcome == "kept":
            click.echo(f"note: instance {instance_id} already exists: kept, nothing started", err=True)
    if result:
        obj.note_no_wake_up()


def _waits_lines(waits: Waits) -> list[str]:
    """One line per thing a running instance waits on (the `status` command's "waiting on" rows)."""
    lines = []
    if waits.waiting_reason:
        retry = f" (next attempt {_when(waits.retry_at)})" if waits.retry_at else ""
        lines.append(f"backed off: {waits.waiting_reason}{retry}")
    for a in waits.activities:
        where = "".join(
            f" {label} {value}"
            for label, value in (("tag", a.tag), ("session", a.session_id), ("session owner", a.session_owner))
            if value
        )
        held = f" by {a.claimed_by} until {_when(a.claimed_until)}" if a.claimed_by else ""
        lines.append(
            f"activity {a.name} #{a.event_id}{where}: {a.state}{held}, attempt {a.attempt}, "
            f"since {_when(a.scheduled_at)}"
        )
    lines += [f"timer #{t.event_id}: fires at {_when(t.fire_at)}" for t in waits.timers]
    lines += [f"event {e.name!r} #{e.event_id}: since {_when(e.since)}" for e in waits.events]
    lines += [f"queue {q.name!r} #{q.event_id}: since {_when(q.since)}" for q in waits.queues]
    lines += [f"child {c.instance_id} ({c.name}): {c.status}, since {_when(c.since)}" for c in waits.children]
    if waits.inbox_pending:
        lines.append(f"{waits.inbox_pending} delivered message(s) waiting for the next turn")
    return lines


def _status_document(info: Any, result: Any, waits: Waits | None = None) -> dict[str, Any]:
    return {
        "instance_id": info.instance_id,
        "orchestration_name": info.orchestration_name,
        "orchestration_version": info.orchestration_version,
        "status": result.status,
        "execution_id": info.current_execution_id,
        "parent_instance_id": info.parent_instance_id,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "custom_status": result.custom_status,
        "custom_status_version": result.custom_status_version,
        "output": result.output,
        "error": result.error,
        "waiting_reason": getattr(result, "waiting_reason", None),
        "waits": None if waits is None else dataclasses.asdict(waits),
        "restarted_from": getattr(info, "restarted_from", None),
    }


@main.command()
@click.argument("instance_id")
@_json_option
@click.pass_obj
@_store_errors
def status(obj: Ctx, instance_id: str, as_json: bool) -> None:
    """Show an instance's status."""
    client = obj.client()
    info = _require_instance(client, instance_id)
    result = client.get_status(instance_id)
    waits = client.get_waits(instance_id)
    if as_json or obj.json:
        _emit_json(_status_document(info, result, waits))
        return
    rows: list[tuple[str, Any]] = [
        ("instance", info.instance_id),
        ("orchestration", f"{info.orchestration_name} {info.orchestration_version or ''}".strip()),
        ("status", result.status),
        ("execution", str(info.current_execution_id)),
        ("created", _when(info.created_at)),
        ("updated", _when(info.updated_at)),
        ("custom status", f"{result.custom_status} (v{result.custom_status_version})"),
        ("output", json.dumps(result.output)),
        ("error", result.error or "-"),
    ]
    if info.parent_instance_id:
        rows.insert(1, ("parent", info.parent_instance_id))
    if info.restarted_from:
        rows.insert(1, ("restarted from", info.restarted_from))
    waiting = getattr(result, "waiting_reason", None)
    if waiting is not None:
        rows.append(("waiting reason", waiting))
    lines = _waits_lines(waits)
    rows += [("waiting on" if i == 0 else "", line) for i, line in enumerate(lines)]
    _rows(rows)


@main.command()
@click.argument("instance_id")
@click.option("--execution", type=click.IntRange(min=1), help="Execution id (default: the current one).")
@_json_option
@click.pass_obj
@_store_errors
def history(obj: Ctx, instance_id: str, execution: int | None, as_json: bool) -> None:
    """Print an execution's history as a table."""
    client = obj.client()
    info = _require_instance(client, instance_id)
    if execution is None:
        execution = info.current_execution_id
    else:
        executions = client.list_executions(instance_id)
        if execution not in executions:
            have = ", ".join(str(e) for e in executions) or "none"
            raise click.ClickException(f"instance {instance_id} has no execution {execution} (executions: {have})")
    events = client.read_execution_history(instance_id, execution)
    if as_json or obj.json:
        _emit_json(
            {
                "instance_id": instance_id,
                "execution_id": execution,
                "events": [dataclasses.asdict(e) for e in events],
            }
        )
        return
    click.echo(f"{'id':>4}  {'src':>4}  {'time (UTC)':<23}  {'kind':<32}  data")
    for e in events:
        data = (e.data or "")[:100]
        src = "" if e.source_event_id is None else str(e.source_event_id)
        click.echo(f"{e.event_id:>4}  {src:>4}  {_when(e.timestamp_ms):<23}  {e.kind:<32}  {data}")


@main.command("raise-event")
@click.argument("instance_id")
@click.argument("event_name")
@click.option("--data", help="Event data as JSON.")
@click.pass_obj
@_store_errors
def raise_event(obj: Ctx, instance_id: str, event_name: str, data: str | None) -> None:
    """Raise event EVENT_NAME on a running instance."""
    value = _json_arg(data, "--data")
    client = obj.client()
    _require_running(client, instance_id, "the event was not delivered")
    client.raise_event(instance_id, event_name, value)
    click.echo("event raised")
    obj.note_no_wake_up()


@main.command("enqueue-event")
@click.argument("instance_id")
@click.argument("queue_name")
@click.option("--data", help="Message data as JSON.")
@click.pass_obj
@_store_errors
def enqueue_event(obj: Ctx, instance_id: str, queue_name: str, data: str | None) -> None:
    """Append a message to QUEUE_NAME of a running instance (read by ctx.dequeue_event)."""
    value = _json_arg(data, "--data")
    client = obj.client()
    _require_running(client, instance_id, "the message was not delivered")
    client.enqueue_event(instance_id, queue_name, value)
    click.echo("event enqueued")
    obj.note_no_wake_up()


@main.command()
@click.argument("instance_id")
@click.option("--reason", default="", help="Reason recorded in the failure.")
@click.pass_obj
@_store_errors
def cancel(obj: Ctx, instance_id: str, reason: str) -> None:
    """Cancel a running instance (and its sub-orchestrations)."""
    client = obj.client()
    _require_running(client, instance_id, "nothing to cancel")
    client.cancel_instance(instance_id, reason)
    click.echo("cancel requested")
    obj.note_no_wake_up()


@main.command()
@click.argument("instance_id")
@click.option("--reason", required=True, help="Why (recorded in the OrchestrationRewound history event).")
@_json_option
@click.pass_obj
@_store_errors
def rewind(obj: Ctx, instance_id: str, reason: str, as_json: bool) -> None:
    """Resume a Failed instance from its failed step with the code now deployed; prints the instances rewound
    (it, then the sub-orchestrations rewound with it).

    The failure stays in history, recorded as rewound; the failed activity (or sub-orchestration) runs again.
    With --app, the app's Runtime first replays the history with its code and refuses (exit 1) one it no longer
    reproduces; without it, the next turn detects that and fails the instance again. Exit 1 for an unknown,
    running, completed or canceled instance, with the reason."""
    client = obj.client()
    rewound = client.rewind(instance_id, reason)
    if as_json or obj.json:
        _emit_json({"instance_id": instance_id, "rewound": rewound})
    else:
        click.echo(f"rewound {', '.join(rewound)}")
    obj.note_no_wake_up()


@main.command()
@click.argument("instance_id")
@click.option("--new-id", "new_id", callback=_instance_id_option, help="Id of the new instance.")
@click.option("--version", help="Run this orchestration version (default: the one the instance ran).")
@_json_option
@click.pass_obj
@_store_errors
def restart(obj: Ctx, instance_id: str, new_id: str | None, version: str | None, as_json: bool) -> None:
    """Start a new instance with a finished instance's orchestration and input, linked to it; prints its id.

    The default new id is INSTANCE_ID:restart-N. Exit 1 for an unknown or running instance, or an existing
    --new-id."""
    client = obj.client()
    created = client.restart(instance_id, new_id, version=version)
    if as_json or obj.json:
        _emit_json({"instance_id": created, "restarted_from": instance_id})
    else:
        click.echo(created)
    obj.note_no_wake_up()


@main.command("list")
@click.option("--status", "status_filter", type=click.Choice(["Running", "Completed", "Failed"]))
@_json_option
@click.pass_obj
@_store_errors
def list_instances(obj: Ctx, status_filter: str | None, as_json: bool) -> None:
    """List instance ids (optionally by status)."""
    client = obj.client()
    ids = client.list_instances_by_status(status_filter) if status_filter else client.list_all_instances()
    if as_json or obj.json:
        _emit_json(ids)
        return
    for instance_id in ids:
        click.echo(instance_id)
    obj.note_no_wake_up()


def _tree_rows(client: Client, root: str, all_ids: list[str]) -> list[dict[str, Any]]:
    """The tree's instances, depth first from the root, each with its parent and depth."""
    infos = {i: client.get_instance_info(i, include_waits=False) for i in all_ids}
    children: dict[str | None, list[str]] = {}
    for i in all_ids:
        info = infos[i]
        if i != root and info is not None:
            children.setdefault(info.parent_instance_id, []).append(i)
    out: list[dict[str, Any]] = []

    def visit(instance_id: str, depth: int) -> None:
        info = infos.get(instance_id)
        out.append(
            {
                "instance_id": instance_id,
                "parent_instance_id": None if info is None else info.parent_instance_id,
                "orchestration_name": None if info is None else info.orchestration_name,
                "status": "NotFound" if info is None else info.status,
                "depth": depth,
            }
        )
        for child in sorted(children.get(instance_id, []), key=lambda c: (infos[c].created_at, c)):
            visit(child, depth + 1)

    visit(root, 0)
    seen = {row["instance_id"] for row in out}
    for orphan in (i for i in all_ids if i not in seen):  # deleted or re-parented meanwhile: still shown
        visit(orphan, 1)
    return out


@main.command()
@click.argument("instance_id")
@_json_option
@click.pass_obj
@_store_errors
def tree(obj: Ctx, instance_id: str, as_json: bool) -> None:
    """Show an instance and its sub-orchestrations, indented."""
    client = obj.client()
    _require_instance(client, instance_id)
    found = client.get_instance_tree(instance_id)
    rows = _tree_rows(client, found.root_id, list(found.all_ids))
    if as_json or obj.json:
        _emit_json({"root_id": found.root_id, "size": found.size, "instances": rows})
        return
    for row in rows:
        click.echo(f"{'  ' * row['depth']}{row['instance_id']}  {row['orchestration_name']}  {row['status']}")


@main.command()
@_json_option
@click.pass_obj
@_store_errors
def metrics(obj: Ctx, as_json: bool) -> None:
    """Instance, execution and event counts, and the backlog of the store's queues."""
    client = obj.client()
    system = dataclasses.asdict(client.get_system_metrics())
    depths = dataclasses.asdict(client.get_queue_depths())
    if as_json or obj.json:
        _emit_json({"system": system, "queue_depths": depths})
        return
    _rows([(key.replace("_", " "), value) for key, value in {**system, **depths}.items()])


def _counts(result: Any, as_json: bool, verb: str) -> None:
    fields = dataclasses.asdict(result)
    if as_json:
        _emit_json(fields)
    else:
        click.echo(f"{verb}: " + ", ".join(f"{value} {key.replace('_', ' ')}" for key, value in fields.items()))


@main.command()
@click.argument("instance_id", required=False)
@click.option("--force", is_flag=True, help="Delete even if the instance (or one of its children) is running.")
@click.option("--finished", is_flag=True, help="Instead of one id: every finished root instance (bulk).")
@click.option("--completed-before", type=When(), help="With --finished: only instances that finished before WHEN.")
@click.option("--limit", type=click.IntRange(min=0), help="With --finished: at most this many roots (default 1000).")
@_json_option
@click.pass_obj
@_store_errors
def delete(
    obj: Ctx,
    instance_id: str | None,
    force: bool,
    finished: bool,
    completed_before: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Delete INSTANCE_ID with its sub-orchestrations, or with --finished every finished root instance.

    WHEN is epoch ms, an ISO-8601 time (UTC unless it has an offset), or an age like 30m, 12h, 7d."""
    if finished == (instance_id is not None):
        raise click.UsageError("give an INSTANCE_ID or --finished (not both)")
    if instance_id is not None and (completed_before is not None or limit is not None):
        raise click.UsageError("--completed-before and --limit go with --finished")
    if finished and force:
        raise click.UsageError("--force goes with an INSTANCE_ID (--finished deletes only finished instances)")
    client = obj.client()
    if instance_id is not None:
        _require_instance(client, instance_id)
        result = client.delete_instance(instance_id, force=force)
    else:
        result = client.delete_instance_bulk(InstanceFilter(completed_before=completed_before, limit=limit))
    _counts(result, as_json or obj.json, "deleted")


@main.command()
@click.argument("instance_ids", nargs=-1, metavar="[INSTANCE_ID]...")
@click.option("--all", "all_instances", is_flag=True, help="Instead of ids: every instance (bulk).")
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep this many newest executions (default 1).")
@click.option("--completed-before", type=When(), help="Only executions that completed before WHEN.")
@click.option("--instances-completed-before", type=When(), help="With --all: only instances that finished before WHEN.")
@click.option("--limit", type=click.IntRange(min=0), help="With --all: at most this many instances (default 1000).")
@_json_option
@click.pass_obj
@_store_errors
def prune(
    obj: Ctx,
    instance_ids: tuple[str, ...],
    all_instances: bool,
    keep_last: int | None,
    completed_before: int | None,
    instances_completed_before: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Delete old executions (left by continue-as-new) and their history. The current execution always stays.

    WHEN is epoch ms, an ISO-8601 time (UTC unless it has an offset), or an age like 30m, 12h, 7d."""
    if all_instances == bool(instance_ids):
        raise click.UsageError("give INSTANCE_IDs or --all (not both)")
    if instance_ids and (instances_completed_before is not None or limit is not None):
        raise click.UsageError("--instances-completed-before and --limit go with --all")
    options = PruneOptions(keep_last=keep_last, completed_before=completed_before)
    client = obj.client()
    if all_instances:
        flt = InstanceFilter(completed_before=instances_completed_before, limit=limit)
        result = client.prune_executions_bulk(flt, options)
    else:
        for instance_id in instance_ids:  # all of them exist, or nothing is pruned
            _require_instance(client, instance_id)
        totals = dict.fromkeys(("instances_processed", "executions_deleted", "events_deleted"), 0)
        for instance_id in instance_ids:
            one = client.prune_executions(instance_id, options)
            for key in totals:
                totals[key] += getattr(one, key)
        result = type(one)(**totals)
    _counts(result, as_json or obj.json, "pruned")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond this machine


@main.command()
@click.option(
    "--host",
    envvar="DUROXIDE_DASHBOARD_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (or DUROXIDE_DASHBOARD_HOST).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.option(
    "--token",
    envvar="DUROXIDE_DASHBOARD_TOKEN",
    metavar="SECRET",
    help="Require this token (Authorization: Bearer, or the login form); or DUROXIDE_DASHBOARD_TOKEN. Required to "
    "bind beyond loopback.",
)
@click.option(
    "--show-payloads",
    is_flag=True,
    help="Show inputs, outputs, event data, KV values and errors (hidden by default: they may hold personal data).",
)
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True, help="Server threads.")
@click.pass_obj
@_store_errors
def dashboard(obj: Ctx, host: str, port: int, token: str | None, show_payloads: bool, threads: int) -> None:
    """Serve the web dashboard: instances, what they wait on, timelines, histories, and actions.

    It binds 127.0.0.1 unless --host says otherwise, and refuses an address beyond loopback without --token
    (anyone who reaches it could read workflows and cancel or delete them). Actions wake workers through
    --app or --broker when given."""
    if not _is_loopback(host) and not token:
        raise click.UsageError(
            f"--host {host} is reachable beyond this machine: set --token (or DUROXIDE_DASHBOARD_TOKEN) so the "
            "dashboard requires it"
        )
    try:
        from waitress import serve

        from .dashboard import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs Flask and waitress: pip install 'duroxide-celery[dashboard]' ({exc})"
        ) from None
    try:
        app = create_app(obj.client(), show_payloads=show_payloads, token=token or None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--token") from None
    where = f"[{host}]" if ":" in host else host
    click.echo(f"dashboard on http://{where}:{port}/ (payloads {'shown' if show_payloads else 'hidden'})", err=True)
    serve(app, host=host, port=port, threads=threads, ident="duroxide-dashboard")


# -- schedules ---------------------------------------------------------------------------------------------------
_OVERLAP = click.Choice(list(OVERLAP_POLICIES))


def _schedule_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The definition options shared by `schedule create` and `schedule update` (absent: not given)."""
    options = [
        click.option("--input", "input_json", help="Input as JSON."),
        click.option("--cron", help="Cron expression, 5 fields (minute hour day-of-month month day-of-week)."),
        click.option("--every-ms", type=click.IntRange(min=1), help="Fixed interval in milliseconds (>= 1000)."),
        click.option("--timezone", help="IANA time zone of the cron expression (default UTC)."),
        click.option("--overlap", type=_OVERLAP, help="While the previous run still runs (default skip)."),
        click.option("--catchup-window-ms", type=click.IntRange(min=0), help="Ticks later than this are skipped."),
        click.option("--jitter-ms", type=click.IntRange(min=0), help="Each tick starts up to this much later."),
        click.option("--start-at", type=When(), help="First possible tick: epoch ms or ISO-8601 (UTC by default)."),
        click.option("--end-at", type=When(), help="Last possible tick: epoch ms or ISO-8601 (UTC by default)."),
        click.option("--version", help="Pin an exact orchestration version."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _schedule_changes(input_json: str | None, **given: Any) -> dict[str, Any]:
    changes = {name: value for name, value in given.items() if value is not None}
    if input_json is not None:
        changes["input"] = _json_arg(input_json, "--input")
    return changes


def _cadence(info: Any) -> str:
    if info.cron is not None:
        return f"cron {info.cron!r} {info.timezone}"
    return f"every {info.every_ms} ms"


def _schedule_document(info: Any) -> dict[str, Any]:
    return dataclasses.asdict(info)


@main.group()
def schedule() -> None:
    """Durable schedules: create, list, get, pause, resume, trigger, update, delete."""


@schedule.command("create")
@click.argument("schedule_id")
@click.argument("orchestration")
@_schedule_options
@click.option("--paused", is_flag=True, help="Create it paused.")
@_json_option
@click.pass_obj
@_store_errors
def schedule_create(
    obj: Ctx, schedule_id: str, orchestration: str, input_json: str | None, paused: bool, as_json: bool, **given: Any
) -> None:
    """Create schedule SCHEDULE_ID starting ORCHESTRATION at each tick (--cron or --every-ms)."""
    changes = _schedule_changes(input_json, **given)
    info = obj.client().create_schedule(schedule_id, orchestration, paused=paused, **changes)
    if as_json or obj.json:
        _emit_json(_schedule_document(info))
        return
    when = ", ".join(_when(t) for t in info.next_fire_times[:3]) or "none"
    click.echo(f"schedule {info.schedule_id} created{' (paused)' if info.paused else ''}; next ticks (UTC): {when}")


@schedule.command("update")
@click.argument("schedule_id")
@click.option("--orchestration", help="Start this orchestration instead.")
@_schedule_options
@_json_option
@click.pass_obj
@_store_errors
def schedule_update(obj: Ctx, schedule_id: str, input_json: str | None, as_json: bool, **given: Any) -> None:
    """Change some fields of a schedule (the others stay); --cron replaces --every-ms and the reverse."""
    changes = _schedule_changes(input_json, **given)
    if not changes:
        raise click.UsageError("give at least one field to change")
    info = obj.client().update_schedule(schedule_id, **changes)
    if as_json or obj.json:
        _emit_json(_schedule_document(info))
        return
    click.echo(f"schedule {info.schedule_id} updated; next tick (UTC): {_when(next(iter(info.next_fire_times), 0))}")


@schedule.command("list")
@_json_option
@click.pass_obj
@_store_errors
def schedule_list(obj: Ctx, as_json: bool) -> None:
    """List schedules: id, orchestration, cadence, overlap, state, next tick (UTC), last instance."""
    infos = obj.client().list_schedules()
    if as_json or obj.json:
        _emit_json([_schedule_document(info) for info in infos])
        return
    for info in infos:
        state = "paused" if info.paused else "active"
        upcoming = _when(info.next_fire_times[0]) if info.next_fire_times else "-"
        click.echo(
            f"{info.schedule_id}\t{info.orchestration_name}\t{_cadence(info)}\t{info.overlap}\t{state}\t"
            f"{upcoming}\t{info.last_instance_id or '-'}"
        )


@schedule.command("get")
@click.argument("schedule_id")
@_json_option
@click.pass_obj
@_store_errors
def schedule_get(obj: Ctx, schedule_id: str, as_json: bool) -> None:
    """Show a schedule: its definition, next ticks and its latest runs with their instances' statuses."""
    info = obj.client().get_schedule(schedule_id)
    if info is None:
        raise click.ClickException(f"schedule {schedule_id!r} not found")
    if as_json or obj.json:
        _emit_json(_schedule_document(info))
        return
    _rows(
        [
            ("schedule", info.schedule_id),
            ("orchestration", f"{info.orchestration_name} {info.version or ''}".strip()),
            ("input", json.dumps(info.input)),
            ("cadence", _cadence(info)),
            ("overlap", info.overlap),
            ("catch-up window", f"{info.catchup_window_ms} ms"),
            ("jitter", f"{info.jitter_ms} ms"),
            ("window", f"{_when(info.start_at)} .. {_when(info.end_at)}"),
            ("state", "paused" if info.paused else "active"),
            ("next ticks", ", ".join(_when(t) for t in info.next_fire_times) or "-"),
            ("buffered tick", _when(info.buffered_fire_at)),
            ("skipped ticks", str(info.skipped_count)),
        ]
    )
    for run in info.recent_runs:
        what = run.instance_id or ""
        if run.status:
            what += f" ({run.status})"
        ticks = f" x{run.ticks}" if run.ticks > 1 else ""
        click.echo(f"  {_when(run.fire_at)}  {run.action}{ticks}  {what}  {run.detail or ''}".rstrip())


def _schedule_action(name: str, verb: str, method: str) -> None:
    @schedule.command(name, help=f"{verb.capitalize()} a schedule.")
    @click.argument("schedule_id")
    @click.pass_obj
    @_store_errors
    def command(obj: Ctx, schedule_id: str) -> None:
        getattr(obj.client(), method)(schedule_id)
        click.echo(f"schedule {schedule_id} {verb}")


_schedule_action("pause", "paused", "pause_schedule")
_schedule_action("resume", "resumed", "resume_schedule")
_schedule_action("delete", "deleted", "delete_schedule")


@schedule.command("trigger")
@click.argument("schedule_id")
@click.option("--overlap", type=_OVERLAP, help="Policy for this run (default: the schedule's own).")
@click.pass_obj
@_store_errors
def schedule_trigger(obj: Ctx, schedule_id: str, overlap: str | None) -> None:
    """Run a schedule now; prints the started instance id. Exit 1 when the overlap policy skips or buffers it."""
    client = obj.client()
    started = client.trigger_schedule(schedule_id, overlap=overlap)
    if started is None:
        info = client.get_schedule(schedule_id)
        last = info.recent_runs[0] if info is not None and info.recent_runs else None
        why = f"{last.action}: {last.detail}" if last is not None else "not started"
        raise click.ClickException(f"schedule {schedule_id} not run now ({why})")
    click.echo(started)
    obj.note_no_wake_up()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
