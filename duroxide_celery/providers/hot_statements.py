"""The hot path's statements (turns, activity claims and completions), built once with bound parameters.

Building a Core statement per call (where clauses, coercions, its cache key) cost more CPU than PostgreSQL spent
running it: a turn paid it for eight statements and an activity for three. A prebuilt statement keeps its
memoized cache key, so executing it goes straight to the compiled-statement cache. Parameter names never repeat a
column name that a statement sets (SQLAlchemy reserves those).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    literal_column,
    not_,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .endings import NOTIFY_CHANNEL
from .schema import (
    FLOW_HELD,
    LIMIT_ACTIVITY,
    LIMIT_ORCHESTRATION,
    executions,
    history,
    inbox,
    instances,
    kv,
    limits,
    sessions,
    timers,
    work_items,
)


class db_now_ms(FunctionElement[int]):  # noqa: N801 - reads as the SQL function it stands for
    """The database's clock in epoch milliseconds, read when the statement runs. Lease expiries are computed from
    it and compared against it, so clock skew between worker machines can never hand out a lease that has already
    expired, or take over one that has not (duroxide's own PostgreSQL provider had this bug: a poison livelock ran
    for days). SQLite's clock is the machine's: the same behaviour, from one clock."""

    type = BigInteger()
    inherit_cache = True


@compiles(db_now_ms, "postgresql")
def _db_now_ms_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return "CAST(floor(extract(epoch from clock_timestamp()) * 1000) AS BIGINT)"


@compiles(db_now_ms)
def _db_now_ms_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


INSERT_INBOX = insert(inbox)
INSERT_EXECUTION = insert(executions)
INSERT_HISTORY = insert(history)
INSERT_WORK_ITEMS = insert(work_items)
#: A new activity row claimed by the turn that schedules it (tasks/inline.py): its other columns by name, and its
#: lease of `lease_ms` from the database's clock (db_now_ms), as CLAIM_WORK_ITEM would leave it.
INSERT_CLAIMED_WORK_ITEM = insert(work_items).values(locked_until=db_now_ms() + bindparam("lease_ms", type_=BigInteger))

#: The instance row (`iid`).
INSTANCE = select(instances).where(instances.c.instance_id == bindparam("iid"))


def _insert_new_instance(dialect: Any) -> Any:
    """INSERT of a new instance row (`iid`, `name`, `version`, `parent`, `trace_context`, `now`) that silently
    skips an existing id; returns the id only when it inserted."""
    return (
        dialect.insert(instances)
        .values(
            instance_id=bindparam("iid"),
            orchestration_name=bindparam("name"),
            requested_version=bindparam("version", type_=String),
            status="Running",
            current_execution_id=1,
            custom_status_version=0,
            parent_instance_id=bindparam("parent", type_=String),
            trace_context=bindparam("trace_context", type_=Text),
            created_at=bindparam("now"),
            updated_at=bindparam("now"),
            locked_until=0,
            attempt_count=0,
            next_attempt_at=0,
        )
        .on_conflict_do_nothing()
        .returning(instances.c.instance_id)
    )


#: SQLite (no data-modifying WITH): the instance row alone; see CREATE_INSTANCE.
INSERT_NEW_INSTANCE = _insert_new_instance(sqlite)
#: PostgreSQL's, for many rows at once (Store.create_instances: executed with a list, it is one multi-row INSERT).
INSERT_NEW_INSTANCE_PG = _insert_new_instance(postgresql)


def _create_instance_pg() -> Any:
    created = _insert_new_instance(postgresql).cte("created")
    first_execution = insert(executions).from_select(
        ["instance_id", "execution_id", "status", "started_at", "event_count", "kv_snapshot"],
        select(
            created.c.instance_id,
            literal(1),
            literal("Running", String),
            bindparam("now", type_=BigInteger),
            literal(0),
            literal("{}", Text),
        ),
    )
    start_message = insert(inbox).from_select(
        ["instance_id", "kind", "payload", "created_at"],
        select(
            created.c.instance_id,
            literal("StartOrchestration", String),
            bindparam("payload", type_=Text),
            bindparam("now", type_=BigInteger),
        ),
    )
    # The orchestration's start limit, read in the same statement (flow.py `hold_start` decides with it).
    start_limit = and_(limits.c.kind == LIMIT_ORCHESTRATION, limits.c.name == bindparam("name"))
    return (
        select(created.c.instance_id, limits.c.name, limits.c.max_running, limits.c.key_limit)
        .select_from(created.outerjoin(limits, start_limit))
        .add_cte(first_execution.cte("execution"), start_message.cte("message"))
    )


#: PostgreSQL: create an instance (`iid`, `name`, `version`, `parent`, `trace_context`, `now`), its first execution
#: and its StartOrchestration message (`payload`) in one statement; returns a row only when the id was new: the id,
#: then the orchestration's start limit (its name, max_running, key_limit; NULLs when it has none).
CREATE_INSTANCE = _create_instance_pg()


def set_clause(values: dict[str, Any], prefix: str = "v_", **where: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The column names a prebuilt UPDATE sets (its cache key) and its parameters (`<prefix><column>`, plus
    `where`)."""
    columns = tuple(sorted(values))
    params = {f"{prefix}{c}": values[c] for c in columns}
    params.update(where)
    return columns, params


@lru_cache(maxsize=64)
def update_execution(columns: tuple[str, ...]) -> Any:
    """Set `columns` (parameters `v_<column>`) of one execution (`iid`, `exec`)."""
    return (
        update(executions)
        .where(executions.c.instance_id == bindparam("iid"), executions.c.execution_id == bindparam("exec"))
        .values({c: bindparam(f"v_{c}") for c in columns})
    )


#: One message of the instance, if any (parameter `iid`).
INBOX_PENDING = select(inbox.c.id).where(inbox.c.instance_id == bindparam("iid")).limit(1)

#: The instance's pending messages in arrival order (`iid`).
INBOX_OF = (
    select(inbox.c.id, inbox.c.kind, inbox.c.payload)
    .where(inbox.c.instance_id == bindparam("iid"))
    .order_by(inbox.c.id)
)

#: Consumed messages by id (`ids`, a list).
DELETE_INBOX = delete(inbox).where(inbox.c.id.in_(bindparam("ids", expanding=True)))


#: History of an execution after a known prefix (`iid`, `exec`, `after`).
HISTORY_AFTER = (
    select(history.c.event_id, history.c.kind, history.c.data, history.c.source_event_id, history.c.timestamp_ms)
    .where(
        history.c.instance_id == bindparam("iid"),
        history.c.execution_id == bindparam("exec"),
        history.c.event_id > bindparam("after"),
    )
    .order_by(history.c.event_id)
)

#: The KV snapshot an execution started with (`iid`, `exec`).
KV_SNAPSHOT = select(executions.c.kv_snapshot).where(
    executions.c.instance_id == bindparam("iid"), executions.c.execution_id == bindparam("exec")
)


def _lease_free() -> Any:
    """The instance's lease is free, or expired by the database's clock."""
    return or_(instances.c.lock_owner.is_(None), instances.c.locked_until < db_now_ms())


def _lease_conditions(require_inbox: bool, held_too: bool = False) -> list[Any]:
    """WHERE clause of a lease on an instance (`iid`): free, or its lease expired by the database's clock (unless
    `held_too`); not backed off (`now`); not a start held by a limit; (`require_inbox`) with a pending message."""
    conditions = [
        instances.c.instance_id == bindparam("iid"),
        instances.c.next_attempt_at <= bindparam("now"),  # set from a worker's clock: compared with one
        # A start held by its orchestration's limit waits for admission (providers/flow.py): no turn runs for it.
        or_(instances.c.flow_state.is_(None), instances.c.flow_state != FLOW_HELD),
    ]
    if not held_too:
        conditions.append(_lease_free())
    if require_inbox:
        conditions.append(select(inbox.c.id).where(inbox.c.instance_id == bindparam("iid")).exists())
    return conditions


#: What a lease returns of the instance row (turns.py builds an InstanceLease from them, in this order).
_LEASE_COLUMNS = (
    instances.c.current_execution_id,
    instances.c.orchestration_name,
    instances.c.status,
    instances.c.attempt_count,
    instances.c.next_attempt_at,
    instances.c.custom_status_version,
    instances.c.waiting_reason,
    instances.c.flow_state,
)
#: The lease itself: owner and expiry (`owner`, `lease_ms` from the database's clock), one more attempt.
_LEASE_VALUES: dict[str, Any] = {
    "lock_owner": bindparam("owner"),
    "locked_until": db_now_ms() + bindparam("lease_ms", type_=BigInteger),
    "attempt_count": instances.c.attempt_count + 1,
}


#: Lease a free (or expired) instance that is not backed off (`iid`, `now`, `owner`, `lease_ms`); returns its
#: state. The lease runs `lease_ms` from the database's clock (`db_now_ms`).
ACQUIRE = (
    update(instances).where(*_lease_conditions(require_inbox=False)).values(**_LEASE_VALUES).returning(*_LEASE_COLUMNS)
)


def _json_rows(*columns: Any, order_by: Any) -> Any:
    """The rows' `columns` as one JSON text, an array of arrays in `order_by` order (NULL when there is none)."""
    return cast(func.json_agg(aggregate_order_by(func.json_build_array(*columns), order_by)), Text)


def _lease_and_load_pg() -> Any:
    execution = instances.c.current_execution_id
    messages = select(_json_rows(inbox.c.id, inbox.c.kind, inbox.c.payload, order_by=inbox.c.id)).where(
        inbox.c.instance_id == bindparam("iid")
    )
    # The history after the prefix the caller holds (`prefix_after`, of execution `prefix_exec`), else all of it.
    after = case(
        (execution == bindparam("prefix_exec", type_=Integer), bindparam("prefix_after", type_=Integer)), else_=0
    )
    events = select(
        _json_rows(
            history.c.event_id,
            history.c.kind,
            history.c.data,
            history.c.source_event_id,
            history.c.timestamp_ms,
            order_by=history.c.event_id,
        )
    ).where(history.c.instance_id == bindparam("iid"), history.c.execution_id == execution, history.c.event_id > after)
    # The first execution starts with no KV; later ones carry it from their predecessor.
    snapshot = select(executions.c.kv_snapshot).where(
        executions.c.instance_id == bindparam("iid"), executions.c.execution_id == execution, execution > 1
    )
    # PostgreSQL re-checks an UPDATE's WHERE on a row version committed after the statement's snapshot (a lapsed
    # holder's commit), yet reads every other table as of that snapshot: the history and inbox of before that
    # commit. So the lease is taken only on the row version the snapshot sees (its xmin: the transaction that wrote
    # it); a later version is written only when a turn holds it (the refusal is counted, nothing is read).
    version: Any = literal_column(f"{instances.name}.xmin")
    seen = select(version.label("v")).where(*_lease_conditions(require_inbox=True, held_too=True)).cte("seen")
    clock = select(db_now_ms().label("t")).cte("clock")  # read once: each row version is free or held, not both
    free = or_(instances.c.lock_owner.is_(None), instances.c.locked_until < select(clock.c.t).scalar_subquery())
    taken = func.coalesce(instances.c.lock_owner == bindparam("owner"), false())  # a refusal: false, never NULL
    leased = (
        update(instances)
        .where(
            *_lease_conditions(require_inbox=True, held_too=True),
            or_(version == select(seen.c.v).scalar_subquery(), not_(free)),
        )
        .values(
            {name: case((free, value), else_=instances.c[name]) for name, value in _LEASE_VALUES.items()},
        )
        # A lease held: this poke is refused, and counted for the holder's commit (turn_shapes.py).
        .values(refused_pokes=instances.c.refused_pokes + case((free, 0), else_=1))
        .returning(
            taken.label("taken"),
            *_LEASE_COLUMNS,
            instances.c.refused_pokes,
            instances.c.trace_context,
            case((taken, messages.correlate(instances).scalar_subquery())).label("messages"),
            case((taken, events.correlate(instances).scalar_subquery())).label("events"),
            case((taken, snapshot.correlate(instances).scalar_subquery())).label("kv_snapshot"),
        )
        .cte("leased")
    )
    return select(leased).select_from(seen).outerjoin(leased, true())


#: PostgreSQL: a lease and the turn's reads in one statement (`iid`, `now`, `owner`, `lease_ms`, `prefix_exec`,
#: `prefix_after`). No row when the instance is backed off, held by a start limit or has no message; a row of
#: NULLs when the lease was free in a row version committed after the statement's snapshot (ask again); a row that
#: is not `taken` when another turn holds the lease (the poke is counted in refused_pokes); else the lease's
#: columns, the refused pokes it saw, the trace context, the pending messages and the history (JSON texts) and the
#: execution's KV snapshot.
LEASE_AND_LOAD = _lease_and_load_pg()

#: Extend the lease `owner` holds on an instance (`iid`) to `lease_ms` from now (a long turn); no row when lost.
RENEW_INSTANCE = (
    update(instances)
    .where(instances.c.instance_id == bindparam("iid"), instances.c.lock_owner == bindparam("owner"))
    .values(locked_until=db_now_ms() + bindparam("lease_ms", type_=BigInteger))
)


@lru_cache(maxsize=64)
def finish_instance(columns: tuple[str, ...]) -> Any:
    """Release our lease and set `columns` (parameters `v_<column>`), only while `owner` holds it (`iid`). A turn
    that ran has its handler: the instance no longer waits for one (`waiting_reason`)."""
    values: dict[str, Any] = {
        "lock_owner": None,
        "locked_until": 0,
        "attempt_count": 0,
        "next_attempt_at": 0,
        "waiting_reason": None,
    }
    values.update({c: bindparam(f"v_{c}") for c in columns})
    return (
        update(instances)
        .where(instances.c.instance_id == bindparam("iid"), instances.c.lock_owner == bindparam("owner"))
        .values(**values)
    )


#: Which of these activities (`names`, a list) have limits (flow.py): their new rows start held.
LIMITED_NAMES = select(limits.c.name).where(
    limits.c.kind == LIMIT_ACTIVITY, limits.c.name.in_(bindparam("names", expanding=True))
)


@lru_cache(maxsize=64)
def fence_turn(instance_columns: tuple[str, ...], execution_columns: tuple[str, ...], notify: bool = False) -> Any:
    """PostgreSQL: the first writes of a turn's commit in one statement, all or nothing on its lease: the fence
    (finish_instance: `iid`, `owner`, `v_<column>`), the history (`exec`, one array per column: `h_event_id`,
    `h_kind`, `h_source`, `h_timestamp`, `h_data`), the consumed messages (`ids`), the execution row (`x_<column>`).
    Returns a row only when the lease was ours: the instance's refused pokes (the row's latest count: the fence
    waited for any refusal in flight) and the names among `names` whose activities have limits. `notify`: the turn
    ends the instance, and its commit tells other processes' waits (endings.py)."""
    fence = finish_instance(instance_columns).returning(instances.c.instance_id, instances.c.refused_pokes).cte("fence")
    rows = (
        func.unnest(
            bindparam("h_event_id", type_=ARRAY(Integer)),
            bindparam("h_kind", type_=ARRAY(String)),
            bindparam("h_source", type_=ARRAY(Integer)),
            bindparam("h_timestamp", type_=ARRAY(BigInteger)),
            bindparam("h_data", type_=ARRAY(Text)),
        )
        .table_valued("event_id", "kind", "source_event_id", "timestamp_ms", "data")
        .render_derived(name="e")
    )
    # Each write joins the fence: none happens unless the fence's UPDATE did (and holds the instance's row lock).
    appended = insert(history).from_select(
        ["instance_id", "execution_id", "event_id", "kind", "source_event_id", "timestamp_ms", "data"],
        select(
            fence.c.instance_id,
            bindparam("exec", type_=Integer),
            rows.c.event_id,
            rows.c.kind,
            rows.c.source_event_id,
            rows.c.timestamp_ms,
            rows.c.data,
        ).select_from(fence.join(rows, true())),
    )
    consumed = delete(inbox).where(
        inbox.c.instance_id == fence.c.instance_id, inbox.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
    )
    writes = [appended.cte("appended"), consumed.cte("consumed")]
    if execution_columns:
        execution = (
            update(executions)
            .where(executions.c.instance_id == fence.c.instance_id, executions.c.execution_id == bindparam("exec"))
            .values({c: bindparam(f"x_{c}") for c in execution_columns})
        )
        writes.append(execution.cte("execution"))
    limited = select(func.array_agg(limits.c.name)).where(
        limits.c.kind == LIMIT_ACTIVITY, limits.c.name == any_(bindparam("names", type_=ARRAY(String)))
    )
    fenced = select(fence.c.refused_pokes, limited.scalar_subquery()).add_cte(*writes)
    if notify:  # evaluated for the fence's row only: never when the lease is gone
        fenced = fenced.add_columns(func.pg_notify(literal_column(NOTIFY_CHANNEL), fence.c.instance_id))
    return fenced


def _work_item_key() -> Any:
    return and_(
        work_items.c.instance_id == bindparam("iid"),
        work_items.c.execution_id == bindparam("exec"),
        work_items.c.event_id == bindparam("eid"),
    )


#: Lease an activity row that is free (or expired), visible and within its claim deadline (`iid`, `exec`,
#: `eid`, `now`, `owner`, `lease_ms`: from the database's clock); returns its routing and payload columns.
CLAIM_WORK_ITEM = (
    update(work_items)
    .where(
        _work_item_key(),
        or_(work_items.c.lock_owner.is_(None), work_items.c.locked_until < db_now_ms()),
        work_items.c.visible_at <= bindparam("now"),
        or_(work_items.c.claim_deadline == 0, work_items.c.claim_deadline > bindparam("now")),
        # Work held by a limit waits for admission (providers/flow.py): a stray message for it claims nothing.
        or_(work_items.c.flow_state.is_(None), work_items.c.flow_state != FLOW_HELD),
    )
    .values(
        lock_owner=bindparam("owner"),
        locked_until=db_now_ms() + bindparam("lease_ms", type_=BigInteger),
        attempt_count=work_items.c.attempt_count + 1,
        claim_deadline=0,  # picked up: its ttl no longer applies
    )
    .returning(
        work_items.c.name,
        work_items.c.input,
        work_items.c.session_id,
        work_items.c.tag,
        work_items.c.orchestration_name,
        work_items.c.orchestration_version,
        work_items.c.attempt_count,
    )
)


def _held_work_item() -> Any:
    """WHERE clause: the activity row (`iid`, `exec`, `eid`) while `owner` holds its lease."""
    return and_(_work_item_key(), work_items.c.lock_owner == bindparam("owner"))


#: Delete an activity row we hold (`iid`, `exec`, `eid`, `owner`); returns its name and flow state (an admitted
#: row frees a slot of its limit).
DELETE_LEASED_WORK_ITEM = (
    delete(work_items).where(_held_work_item()).returning(work_items.c.name, work_items.c.flow_state)
)

#: Extend the lease of an activity row we hold to `lease_ms` from now (the database's clock).
RENEW_WORK_ITEM = (
    update(work_items)
    .where(_held_work_item())
    .values(locked_until=db_now_ms() + bindparam("lease_ms", type_=BigInteger))
)

#: Give an activity row we hold back, visible again at `visible`.
ABANDON_WORK_ITEM = (
    update(work_items)
    .where(_held_work_item())
    .values(lock_owner=None, locked_until=0, visible_at=bindparam("visible"), published_at=bindparam("visible"))
)


def _complete_work_item() -> Any:
    done = (
        delete(work_items)
        .where(_held_work_item())
        .returning(work_items.c.instance_id, work_items.c.name, work_items.c.flow_state)
        .cte("done")
    )
    outcome = select(
        done.c.instance_id,
        bindparam("kind", type_=String),
        bindparam("payload", type_=Text),
        bindparam("created", type_=BigInteger),
    )
    queued = insert(inbox).from_select(["instance_id", "kind", "payload", "created_at"], outcome).cte("queued")
    # A turn holding the instance's lease takes this outcome on its next drain: the completion counts itself as a
    # refused poke (what its poke's lease statement would do, turn_shapes.py), so the holder's commit sees it, and
    # publishes none. Only while the row is not locked by that turn's commit (SKIP LOCKED: never wait, never
    # deadlock with a commit that deletes this activity's row); a locked or free lease gets a poke.
    holder = (
        select(instances.c.instance_id)
        .where(instances.c.instance_id == bindparam("iid"), not_(_lease_free()))
        .with_for_update(skip_locked=True)
        .cte("holder")
    )
    counted = (
        update(instances)
        .where(instances.c.instance_id == select(holder.c.instance_id).scalar_subquery(), select(done).exists())
        .values(refused_pokes=instances.c.refused_pokes + 1)
        .returning(instances.c.instance_id)
        .cte("counted")
    )
    # The statement's snapshot still shows the row it deletes: the other rows are those with another key.
    others = (
        select(work_items.c.event_id)
        .where(
            work_items.c.instance_id == bindparam("iid"),
            or_(work_items.c.execution_id != bindparam("exec"), work_items.c.event_id != bindparam("eid")),
        )
        .exists()
    )
    wake = not_(select(counted.c.instance_id).exists())
    return select(done.c.name, done.c.flow_state, others, wake).add_cte(queued, counted)


#: PostgreSQL: delete an activity row we hold and queue its outcome message (`kind`, `payload`, `created`) in one
#: statement; returns the row's name, its flow state, whether the instance has other activity rows and whether this
#: completion must publish the instance's wake-up, or nothing (and inserts nothing) when the row is gone or another
#: worker holds it.
COMPLETE_WORK_ITEM = _complete_work_item()


#: When the next durable timer fires, when the next unclaimed activity reaches its claim deadline, and when work
#: held by a rate limit may next be admitted (each None if there is none).
NEXT_DUE = select(
    select(func.min(timers.c.fire_at_ms)).scalar_subquery(),
    select(func.min(work_items.c.claim_deadline)).where(work_items.c.claim_deadline > 0).scalar_subquery(),
    select(func.min(limits.c.next_admit_at)).where(limits.c.next_admit_at > 0).scalar_subquery(),
)


def _fire_due_timers() -> Any:
    picked = (
        select(timers.c.instance_id, timers.c.execution_id, timers.c.event_id)
        .where(timers.c.fire_at_ms <= bindparam("due_by"))
        .order_by(timers.c.fire_at_ms)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)  # two beats at once fire disjoint timers
    )
    fired = (
        delete(timers)
        .where(tuple_(timers.c.instance_id, timers.c.execution_id, timers.c.event_id).in_(picked))
        .returning(timers.c.instance_id, timers.c.execution_id, timers.c.event_id, timers.c.fire_at_ms)
        .cte("fired")
    )
    payload = func.json_build_object(
        "execution_id", fired.c.execution_id, "event_id", fired.c.event_id, "fire_at_ms", fired.c.fire_at_ms
    )
    messages = select(
        fired.c.instance_id, literal("TimerFired", String), cast(payload, Text), bindparam("now", type_=BigInteger)
    ).order_by(fired.c.fire_at_ms, fired.c.event_id)
    queued = insert(inbox).from_select(["instance_id", "kind", "payload", "created_at"], messages).cte("queued")
    return (
        select(fired.c.instance_id, instances.c.orchestration_name)
        .join_from(fired, instances, instances.c.instance_id == fired.c.instance_id, isouter=True)
        .add_cte(queued)
    )


#: PostgreSQL: delete up to `limit` timers due by `due_by` and queue their TimerFired messages (created at `now`), in
#: one statement; returns (instance id, orchestration name) per fired timer.
FIRE_DUE_TIMERS = _fire_due_timers()


def _release_instance(reset_attempts: bool) -> Any:
    values: dict[str, Any] = {
        "lock_owner": None,
        "locked_until": 0,
        "next_attempt_at": bindparam("next_attempt"),
        "waiting_reason": bindparam("reason", type_=Text),
    }
    if reset_attempts:
        values["attempt_count"] = 0
    return (
        update(instances)
        .where(instances.c.instance_id == bindparam("iid"), instances.c.lock_owner == bindparam("owner"))
        .values(**values)
    )


#: Give back the lease `owner` holds on an instance (`iid`), setting `next_attempt` and `reason`
#: (waiting_reason); RELEASE_INSTANCE_RESET also forgets the failed attempts.
RELEASE_INSTANCE = _release_instance(reset_attempts=False)
RELEASE_INSTANCE_RESET = _release_instance(reset_attempts=True)

#: The orchestration name of an instance (`iid`), and its status.
INSTANCE_NAME = select(instances.c.orchestration_name).where(instances.c.instance_id == bindparam("iid"))
INSTANCE_STATUS = select(instances.c.status).where(instances.c.instance_id == bindparam("iid"))

#: One KV value of an instance (`iid`, `kv_key`).
KV_VALUE = select(kv.c.value).where(kv.c.instance_id == bindparam("iid"), kv.c.key == bindparam("kv_key"))
#: Set an existing KV key (`iid`, `kv_key`, `value`, `stamp`); INSERT_KV adds a new one (column names).
UPDATE_KV = (
    update(kv)
    .where(kv.c.instance_id == bindparam("iid"), kv.c.key == bindparam("kv_key"))
    .values(value=bindparam("v_value"), last_updated_at_ms=bindparam("stamp"))
)
INSERT_KV = insert(kv)
#: Delete one KV key (`iid`, `kv_key`), or all of an instance's keys (`iid`).
DELETE_KV_KEY = delete(kv).where(kv.c.instance_id == bindparam("iid"), kv.c.key == bindparam("kv_key"))
DELETE_KV_ALL = delete(kv).where(kv.c.instance_id == bindparam("iid"))

#: Set an instance's custom status (`iid`, `status`) and bump its version.
BUMP_CUSTOM_STATUS = (
    update(instances)
    .where(instances.c.instance_id == bindparam("iid"))
    .values(custom_status=bindparam("v_status"), custom_status_version=instances.c.custom_status_version + 1)
)

#: A turn's new timers (column names).
INSERT_TIMERS = insert(timers)


def _delete_scheduled(table: Any) -> Any:
    return delete(table).where(
        table.c.instance_id == bindparam("iid"),
        table.c.execution_id == bindparam("exec"),
        table.c.event_id.in_(bindparam("eids", expanding=True)),
    )


#: Delete an execution's (`iid`, `exec`) activity rows or timers by their scheduled event ids (`eids`, a list);
#: the activity rows deleted return their name and flow state (an admitted one frees a slot of its limit).
DELETE_WORK_ITEMS_OF = _delete_scheduled(work_items).returning(work_items.c.name, work_items.c.flow_state)
DELETE_TIMERS_OF = _delete_scheduled(timers)

#: The live owners of sessions (`ids`, a list) at `now`.
SESSION_OWNERS = select(sessions.c.session_id, sessions.c.owner).where(
    sessions.c.session_id.in_(bindparam("ids", expanding=True)), sessions.c.locked_until > bindparam("now")
)

#: Which activity rows of these instances (`iids`) these lease owners (`owners`) hold.
OWNED_WORK_ITEMS = select(
    work_items.c.instance_id, work_items.c.execution_id, work_items.c.event_id, work_items.c.lock_owner
).where(
    work_items.c.instance_id.in_(bindparam("iids", expanding=True)),
    work_items.c.lock_owner.in_(bindparam("owners", expanding=True)),
)

#: Whether an instance (`iid`) has activity rows.
WORK_ITEM_OF = select(work_items.c.event_id).where(work_items.c.instance_id == bindparam("iid")).limit(1)

#: Any activity row past its claim deadline at `now` (the scheduler asks on every tick).
EXPIRED_WORK_ITEM = (
    select(work_items.c.event_id)
    .where(work_items.c.claim_deadline > 0, work_items.c.claim_deadline <= bindparam("now"))
    .limit(1)
)

#: SQLite: up to `limit` timers due by `due_by`, earliest first.
DUE_TIMERS = (
    select(timers.c.instance_id, timers.c.execution_id, timers.c.event_id, timers.c.fire_at_ms)
    .where(timers.c.fire_at_ms <= bindparam("due_by"))
    .order_by(timers.c.fire_at_ms)
    .limit(bindparam("limit"))
)
