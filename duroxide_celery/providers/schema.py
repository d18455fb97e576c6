"""Tables of the durable store. Times are epoch milliseconds; payloads are JSON text.

The store holds every piece of pending work (inbox messages, activity work items, timers): the broker only
carries wake-up hints about these rows.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

#: Marks a stored text that `NulSafeText` escaped (a Unicode noncharacter: never part of ordinary text).
_NUL_MARK = "\ufdd0"
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def escape_nul(text: str) -> str:
    """PostgreSQL text cannot hold U+0000: a text that has one (or that starts with the mark, so that decoding
    stays unambiguous) is stored marked, with backslashes doubled and NUL as `\\0`. Everything else is stored
    as it is, so existing rows and ordinary texts read back unchanged."""
    if "\x00" not in text and not text.startswith(_NUL_MARK):
        return text
    return _NUL_MARK + text.replace("\\", "\\\\").replace("\x00", "\\0")


def unescape_nul(text: str) -> str:
    if not text.startswith(_NUL_MARK):
        return text
    return _UNESCAPE.sub(lambda m: "\x00" if m.group(1) == "0" else m.group(1), text[len(_NUL_MARK) :])


class NulSafeText(TypeDecorator[str]):
    """Text written from user-derived strings (error messages, custom status, KV values): on PostgreSQL, a NUL
    character is escaped on the way in and restored on the way out (`escape_nul`), so both stores record and
    return the same text. A NUL once failed every retry of a turn's commit on PostgreSQL and ended the instance
    as poison with its real error lost (issue 11 item 2). JSON columns need none of this: JSON escapes NUL."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None or dialect.name != "postgresql" or not isinstance(value, str):
            return value
        return escape_nul(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None or dialect.name != "postgresql":
            return value
        return unescape_nul(value)


#: An autoincrementing 64-bit key that SQLite also treats as its rowid.
AutoId = BigInteger().with_variant(Integer, "sqlite")

instances = Table(
    "dx_instances",
    metadata,
    Column("instance_id", String(512), primary_key=True),
    Column("orchestration_name", String(256), nullable=False),
    Column("orchestration_version", String(64)),
    Column("requested_version", String(64)),
    Column("status", String(32), nullable=False),
    Column("current_execution_id", Integer, nullable=False, default=1),
    Column("output", Text),
    Column("error", NulSafeText),
    Column("custom_status", NulSafeText),
    Column("custom_status_version", Integer, nullable=False, default=0),
    Column("parent_instance_id", String(512)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # The instance lease: one turn at a time (DESIGN invariant 2).
    Column("lock_owner", String(256)),
    Column("locked_until", BigInteger, nullable=False, default=0),
    # Poison guard and unregistered-handler backoff (semantics.md 2.19).
    Column("attempt_count", Integer, nullable=False, default=0),
    Column("next_attempt_at", BigInteger, nullable=False, default=0),
    # Why a running instance waits (a handler no worker has registered, a start held by a limit), for get_status;
    # None otherwise.
    Column("waiting_reason", NulSafeText),
    # Client.restart: the instance this one was restarted from (the link is kept if that one is deleted).
    Column("restarted_from", String(512)),
    # The W3C trace context (JSON of traceparent/tracestate) its spans descend from; None when not traced.
    Column("trace_context", Text),
    # Flow control of starts (Runtime.limit_starts): the key its limit counts it under ('' for none) and its state:
    # NULL (no limit), 'held' (its first turn waits for a slot: it cannot be leased) or 'admitted' (holds a slot
    # while it is Running).
    Column("flow_key", String(256), nullable=False, server_default=""),  # no Python default: CTE inserts omit it
    Column("flow_state", String(16)),
    # Pokes refused while a turn held the lease (PostgreSQL): that turn's commit compares it with the count its
    # lease saw, to learn whether messages arrived meanwhile (providers/turn_shapes.py).
    Column("refused_pokes", Integer, nullable=False, server_default="0"),  # no Python default: CTE inserts omit it
    Index("ix_dx_instances_parent", "parent_instance_id"),
    # Listing page by page (dashboard): newest first, optionally by status or name, and by id prefix.
    Index("ix_dx_instances_created", "created_at", "instance_id"),
    Index("ix_dx_instances_status_created", "status", "created_at", "instance_id"),
    Index("ix_dx_instances_name_created", "orchestration_name", "created_at", "instance_id"),
    Index("ix_dx_instances_id_prefix", "instance_id", postgresql_ops={"instance_id": "text_pattern_ops"}),
    Index("ix_dx_instances_flow", "flow_state", "orchestration_name", "flow_key"),
)

executions = Table(
    "dx_executions",
    metadata,
    Column("instance_id", String(512), primary_key=True),
    Column("execution_id", Integer, primary_key=True),
    Column("status", String(32), nullable=False),
    Column("orchestration_version", String(64)),
    Column("output", Text),
    Column("error", NulSafeText),
    Column("started_at", BigInteger, nullable=False),
    Column("completed_at", BigInteger),
    Column("event_count", Integer, nullable=False, default=0),  # unused: counted from history when read
    Column("replay_version", Integer),
    # KV state when this execution began: what its code reads before its own writes (survives replay).
    Column("kv_snapshot", Text),
)

history = Table(
    "dx_history",
    metadata,
    Column("instance_id", String(512), primary_key=True),
    Column("execution_id", Integer, primary_key=True),
    Column("event_id", Integer, primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("source_event_id", Integer),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
)

inbox = Table(
    "dx_inbox",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("instance_id", String(512), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_dx_inbox_instance", "instance_id", "id"),
    Index("ix_dx_inbox_created", "created_at"),
)

work_items = Table(
    "dx_work_items",
    metadata,
    Column("instance_id", String(512), primary_key=True),
    Column("execution_id", Integer, primary_key=True),
    Column("event_id", Integer, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("input", Text, nullable=False),
    Column("session_id", String(256)),
    Column("tag", String(256)),
    Column("orchestration_name", String(256)),
    Column("orchestration_version", String(64)),
    Column("lock_owner", String(256)),
    Column("locked_until", BigInteger, nullable=False, default=0),
    Column("attempt_count", Integer, nullable=False, default=0),
    Column("visible_at", BigInteger, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("published_at", BigInteger, nullable=False, default=0),
    # 0: none; else when an unclaimed activity fails (its ttl_ms: no worker serves its tag).
    Column("claim_deadline", BigInteger, nullable=False, default=0, server_default="0"),
    # Flow control (providers/flow.py): the key a per-key limit counts the row under ('' for none), its admission
    # priority, and its state under a limit: NULL (its activity has no limit: published at once), 'held' (waits
    # in the store for a slot: never published, never claimable) or 'admitted' (holds a slot until the row goes).
    Column("flow_key", String(256), nullable=False, default="", server_default=""),
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
    Column("flow_state", String(16)),
    Index("ix_dx_work_items_published", "published_at"),
    Index("ix_dx_work_items_deadline", "claim_deadline"),
    Index("ix_dx_work_items_flow", "flow_state", "name", "flow_key"),
)

#: dx_work_items.flow_state of a row waiting for a slot of its activity's limit, and of one holding a slot.
FLOW_HELD, FLOW_ADMITTED = "held", "admitted"

#: dx_limits.kind of an activity's limits, and of an orchestration's start limits.
LIMIT_ACTIVITY, LIMIT_ORCHESTRATION = "activity", "orchestration"

limits = Table(
    "dx_limits",
    metadata,
    # The limits of one activity (Runtime.limit) or of an orchestration's starts (Runtime.limit_starts), written by
    # every runtime that registers them: the store is where all workers agree. NULL: no such limit.
    Column("kind", String(16), primary_key=True),  # 'activity' or 'orchestration'
    Column("name", String(256), primary_key=True),
    Column("max_running", Integer),  # concurrent across all keys (`limit=`)
    Column("key_limit", Integer),  # concurrent per key (`key_limit=`)
    # Slots handed out so far: the clock of fairness (dx_flow_keys.last_turn).
    Column("admissions", BigInteger, nullable=False, default=0, server_default="0"),
    # Rate limits: at most `rate_count` admissions per `rate_period_ms` across keys (`rate=`), and per key
    # (`key_rate=`); counted from dx_admissions.
    Column("rate_count", Integer),
    Column("rate_period_ms", BigInteger),
    Column("key_rate_count", Integer),
    Column("key_rate_period_ms", BigInteger),
    # When work held by a rate may next be admitted (0: nothing waits on a rate): the due-work loop's wake-up.
    Column("next_admit_at", BigInteger, nullable=False, default=0, server_default="0"),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_dx_limits_next_admit", "next_admit_at"),
)

admissions = Table(
    "dx_admissions",
    metadata,
    # Recent admissions of rate-limited activities (kept for a minute, or the rate's period if longer): what a rate
    # limit counts, and a record an operator (or a test) can read.
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False),
    Column("flow_key", String(256), nullable=False),
    Column("admitted_at", BigInteger, nullable=False),
    Index("ix_dx_admissions_name", "name", "admitted_at"),
)

flow_keys = Table(
    "dx_flow_keys",
    metadata,
    # When each key of a limited activity (or orchestration) last got a slot: held work goes to the key that
    # waited longest.
    Column("kind", String(16), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("flow_key", String(256), primary_key=True),
    Column("last_turn", BigInteger, nullable=False),  # dx_limits.admissions when it got its last slot
    Column("last_admitted_at", BigInteger, nullable=False),
)

sessions = Table(
    "dx_sessions",
    metadata,
    Column("session_id", String(256), primary_key=True),
    Column("owner", String(256), nullable=False),  # the worker node id whose session queue gets its activities
    Column("locked_until", BigInteger, nullable=False),
    Column("last_activity_at", BigInteger, nullable=False),
    Index("ix_dx_sessions_owner", "owner"),
)

timers = Table(
    "dx_timers",
    metadata,
    Column("instance_id", String(512), primary_key=True),
    Column("execution_id", Integer, primary_key=True),
    Column("event_id", Integer, primary_key=True),
    Column("fire_at_ms", BigInteger, nullable=False),
    Index("ix_dx_timers_fire_at", "fire_at_ms"),
)

kv = Table(
    "dx_kv",
    metadata,
    Column("instance_id", String(512), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("value", NulSafeText, nullable=False),
    Column("last_updated_at_ms", BigInteger, nullable=False),
)

# Durable schedules (duroxide_celery/schedules.py has the rules, providers/schedules.py the statements).
schedules = Table(
    "dx_schedules",
    metadata,
    Column("schedule_id", String(512), primary_key=True),
    Column("orchestration_name", String(256), nullable=False),
    Column("orchestration_version", String(64)),
    Column("input", Text, nullable=False),
    Column("cron", String(256)),
    Column("every_ms", BigInteger),
    Column("timezone", String(64), nullable=False),
    Column("overlap", String(32), nullable=False),
    Column("catchup_window_ms", BigInteger, nullable=False),
    Column("jitter_ms", BigInteger, nullable=False),
    Column("start_at", BigInteger),
    Column("end_at", BigInteger),
    Column("paused", Boolean, nullable=False),
    # The next tick not yet handled (nominal UTC time); NULL once end_at has passed.
    Column("next_fire_at", BigInteger),
    # When the timer loop must look at the row next (the next tick plus its jitter, or sooner to start a buffered
    # tick); NULL while paused or finished. The loop's only query when nothing is due reads this index.
    Column("due_at", BigInteger),
    # buffer_one: the tick waiting for the previous run to end.
    Column("buffered_fire_at", BigInteger),
    Column("last_fire_at", BigInteger),
    Column("last_instance_id", String(512)),
    Column("skipped_count", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_dx_schedules_due", "due_at"),
)

# What happened to each tick (started, triggered, skipped, buffered), the newest few per schedule.
schedule_runs = Table(
    "dx_schedule_runs",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("schedule_id", String(512), nullable=False),
    Column("fire_at", BigInteger, nullable=False),
    Column("action", String(32), nullable=False),
    Column("instance_id", String(512)),
    # How many ticks the record stands for (a run of missed ticks is one record).
    Column("ticks", BigInteger, nullable=False),
    Column("detail", Text),
    Column("recorded_at", BigInteger, nullable=False),
    Index("ix_dx_schedule_runs_schedule", "schedule_id", "id"),
)
