"""`duroxide-celery`: operate on the store from a shell (migrate, start, inspect, signal, cancel).

The database comes from `--db URL` or the DUROXIDE_DB_URL environment variable (sqlite:///path or
postgresql://...). Bad input (unknown id, invalid JSON, unreachable database) prints one clear line and exits 1.
Commands write to the store only; workers pick the work up through the recovery sweep, or at once with
`--broker URL` (your Celery broker) to publish the wake-up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

import click
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .client import Client
from .providers import Provider, provider_from_url
from .providers.migrate import upgrade


class Ctx:
    def __init__(self, db: str | None, broker: str | None, prefix: str):
        self.db, self.broker, self.prefix = db, broker, prefix

    def provider(self) -> Provider:
        if not self.db:
            raise click.ClickException("no database: pass --db URL or set DUROXIDE_DB_URL")
        try:
            return provider_from_url(self.db)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None

    def client(self) -> Client:
        app = None
        if self.broker:
            from celery import Celery

            app = Celery("duroxide-cli", broker=self.broker, set_as_current=False)
            app.conf.update(task_serializer="json", accept_content=["json"])
        return Client(self.provider(), app=app, queue_prefix=self.prefix)


def _store_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn database failures into one readable line and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            raise click.ClickException(f"database unreachable or unusable: {exc.orig}") from None
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from None


def _require_instance(client: Client, instance_id: str) -> None:
    if client.get_instance_info(instance_id) is None:
        raise click.ClickException(f"no instance {instance_id!r}")


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@click.group()
@click.option("--db", envvar="DUROXIDE_DB_URL", help="Database URL (or DUROXIDE_DB_URL).")
@click.option("--broker", envvar="DUROXIDE_BROKER_URL", help="Celery broker URL, to wake workers at once.")
@click.option("--queue-prefix", default="duroxide", show_default=True, help="Queue name prefix of the workers.")
@click.pass_context
def main(ctx: click.Context, db: str | None, broker: str | None, queue_prefix: str) -> None:
    """Operate duroxide-celery orchestrations."""
    ctx.obj = Ctx(db, broker, queue_prefix)


@main.group()
def db() -> None:
    """Schema management."""


@db.command("upgrade")
@click.pass_obj
@_store_errors
def db_upgrade(obj: Ctx) -> None:
    """Create or migrate the schema to the newest revision."""
    provider = obj.provider()
    upgrade(provider._create_engine(), provider.schema)
    click.echo("schema is up to date")


@main.command()
@click.argument("name")
@click.option("--id", "instance_id", help="Instance id (default: a new UUID).")
@click.option("--input", "input_json", help="Input as JSON.")
@click.option("--version", help="Pin an exact orchestration version.")
@click.pass_obj
@_store_errors
def start(obj: Ctx, name: str, instance_id: str | None, input_json: str | None, version: str | None) -> None:
    """Start orchestration NAME."""
    import uuid

    value = _json_arg(input_json, "--input")
    client = obj.client()
    instance_id = instance_id or str(uuid.uuid4())
    if version:
        client.start_orchestration_versioned(instance_id, name, value, version)
    else:
        client.start_orchestration(instance_id, name, value)
    click.echo(instance_id)


@main.command()
@click.argument("instance_id")
@click.pass_obj
@_store_errors
def status(obj: Ctx, instance_id: str) -> None:
    """Show an instance's status."""
    client = obj.client()
    info = client.get_instance_info(instance_id)
    if info is None:
        raise click.ClickException(f"no instance {instance_id!r}")
    result = client.get_status(instance_id)
    rows = [
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
    for key, value in rows:
        click.echo(f"{key:<14} {value}")


@main.command()
@click.argument("instance_id")
@click.option("--execution", type=int, help="Execution id (default: the current one).")
@click.pass_obj
@_store_errors
def history(obj: Ctx, instance_id: str, execution: int | None) -> None:
    """Print an execution's history as a table."""
    client = obj.client()
    info = client.get_instance_info(instance_id)
    if info is None:
        raise click.ClickException(f"no instance {instance_id!r}")
    events = client.read_execution_history(instance_id, execution or info.current_execution_id)
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
    _require_instance(client, instance_id)
    client.raise_event(instance_id, event_name, value)
    click.echo("event raised")


@main.command()
@click.argument("instance_id")
@click.option("--reason", default="", help="Reason recorded in the failure.")
@click.pass_obj
@_store_errors
def cancel(obj: Ctx, instance_id: str, reason: str) -> None:
    """Cancel a running instance (and its sub-orchestrations)."""
    client = obj.client()
    _require_instance(client, instance_id)
    client.cancel_instance(instance_id, reason)
    click.echo("cancel requested")


@main.command("list")
@click.option("--status", "status_filter", type=click.Choice(["Running", "Completed", "Failed"]))
@click.pass_obj
@_store_errors
def list_instances(obj: Ctx, status_filter: str | None) -> None:
    """List instance ids (optionally by status)."""
    client = obj.client()
    ids = client.list_instances_by_status(status_filter) if status_filter else client.list_all_instances()
    for instance_id in ids:
        click.echo(instance_id)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
