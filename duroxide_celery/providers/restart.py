"""Starting again in the store: Client.restart (a new instance with a finished one's input, linked to it) and
start_orchestration(if_exists="restart_if_finished") (a finished instance's id gets a fresh execution).

Both write in one transaction and leave the wake-up to the caller, after the commit.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from ..errors import InstanceAlreadyExists, InstanceNotFound, InstanceStillRunning
from ..replay import events as ev
from ..types import TERMINAL_STATUSES
from .schema import executions, history, inbox, instances, kv, timers, work_items
from .store import Store, now_ms

#: How many default ids (`<id>:restart-<n>`) a restart tries past the first free-looking one (others may be
#: taken meanwhile, or by hand).
_DEFAULT_ID_TRIES = 100


def restart_id(instance_id: str, n: int) -> str:
    """The default id of the n-th restart of `instance_id`."""
    return f"{instance_id}:restart-{n}"


def restart_instance(
    store: Store, instance_id: str, new_instance_id: str | None, version: str | None
) -> tuple[str, str]:
    """Create the restart of a finished instance; returns (new id, orchestration name). The new instance has the
    input the old one was started with (its oldest stored execution's), its orchestration, and `version` or the
    version the old one ran. Raises InstanceNotFound, InstanceStillRunning, or InstanceAlreadyExists (an
    explicit `new_instance_id` that exists)."""
    with store.write() as conn:
        inst = conn.execute(
            select(instances.c.status, instances.c.orchestration_name, instances.c.orchestration_version)
            .add_columns(instances.c.requested_version)
            .where(instances.c.instance_id == instance_id)
            .with_for_update()
        ).first()
        if inst is None:
            raise InstanceNotFound(f"Instance {instance_id} not found")
        status, name, ran_version, requested = inst
        if status not in TERMINAL_STATUSES:
            raise InstanceStillRunning(
                f"Instance {instance_id} is {status}: only a finished instance is restarted (cancel it first)"
            )
        started = conn.execute(
            select(history.c.data)
            .where(history.c.instance_id == instance_id, history.c.event_id == 1)
            .order_by(history.c.execution_id)
            .limit(1)
        ).scalar()
        if started is None:
            raise InstanceNotFound(f"Instance {instance_id} has no recorded start: there is no input to restart with")
        input_json = json.loads(started).get("input") or "null"
        pinned = version or ran_version or requested
        if new_instance_id is not None:
            if not store.create_instance(conn, new_instance_id, name, input_json, pinned):
                raise InstanceAlreadyExists(f"Instance {new_instance_id} already exists")
            new_id = new_instance_id
        else:
            done = conn.execute(
                select(func.count()).select_from(instances).where(instances.c.restarted_from == instance_id)
            ).scalar()
            for n in range(int(done or 0) + 1, int(done or 0) + 1 + _DEFAULT_ID_TRIES):
                if store.create_instance(conn, restart_id(instance_id, n), name, input_json, pinned):
                    new_id = restart_id(instance_id, n)
                    break
            else:
                raise InstanceAlreadyExists(
                    f"the next {_DEFAULT_ID_TRIES} default restart ids of {instance_id} are taken; pass new_instance_id"
                )
        conn.execute(update(instances).where(instances.c.instance_id == new_id).values(restarted_from=instance_id))
    return new_id, str(name)


def current_execution(conn: Connection, instance_id: str) -> int:
    """The instance's current execution id (0 if it does not exist)."""
    value = conn.execute(
        select(instances.c.current_execution_id).where(instances.c.instance_id == instance_id)
    ).scalar()
    return int(value or 0)


def current_executions(conn: Connection, instance_ids: list[str], chunk: int = 1000) -> dict[str, int]:
    """`current_execution` of many instances (a bulk start's existing ids), `chunk` ids per statement; an id that
    does not exist is left out."""
    found: dict[str, int] = {}
    for at in range(0, len(instance_ids), chunk):
        found.update(
            conn.execute(
                select(instances.c.instance_id, instances.c.current_execution_id).where(
                    instances.c.instance_id.in_(instance_ids[at : at + chunk])
                )
            ).all()
        )
    return found


def replace_finished(
    conn: Connection, instance_id: str, name: str, input_json: str, version: str | None
) -> tuple[str, int]:
    """For a start of an id that exists: give a finished instance a fresh execution (("restarted", its id)),
    leave a running one (("kept", its current execution id)). The fresh execution starts like a new instance:
    this name, input and version, empty KV and custom status, no parent; earlier executions' histories stay."""
    row = conn.execute(
        select(instances.c.status, instances.c.current_execution_id)
        .where(instances.c.instance_id == instance_id)
        .with_for_update()
    ).first()
    if row is None or row[0] not in TERMINAL_STATUSES:
        return "kept", int(row[1]) if row else 0
    now = now_ms()
    new_exec = int(row[1]) + 1
    # Leftovers of the finished execution (work not yet cancelled) must not run against the new one.
    for table in (work_items, timers):
        conn.execute(delete(table).where(table.c.instance_id == instance_id, table.c.execution_id < new_exec))
    conn.execute(delete(kv).where(kv.c.instance_id == instance_id))
    conn.execute(
        insert(executions).values(
            instance_id=instance_id,
            execution_id=new_exec,
            status="Running",
            started_at=now,
            event_count=0,
            kv_snapshot="{}",
        )
    )
    values: dict[str, Any] = {
        "orchestration_name": name,
        "orchestration_version": None,
        "requested_version": version,
        "status": "Running",
        "current_execution_id": new_exec,
        "output": None,
        "error": None,
        "custom_status": None,
        "custom_status_version": instances.c.custom_status_version + 1,
        "parent_instance_id": None,
        "restarted_from": None,
        "attempt_count": 0,
        "next_attempt_at": 0,
        "waiting_reason": None,
        "updated_at": now,
    }
    conn.execute(update(instances).where(instances.c.instance_id == instance_id).values(values))
    payload = {"name": name, "input": input_json, "version": version}
    conn.execute(
        insert(inbox).values(instance_id=instance_id, kind=ev.MSG_START, payload=json.dumps(payload), created_at=now)
    )
    return "restarted", new_exec
