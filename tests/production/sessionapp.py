"""A Celery app for the session tests (test_sessions_production.py): activities that keep per-session state in
the worker process's memory, as a loaded model or an open connection would.

    celery -A tests.production.sessionapp worker -P threads --duroxide-node-id s1

Settings come from the environment variables examples/shop reads (tests/production/conftest.py's Cluster sets
them), plus SESSION_LOCK_MS, SESSION_IDLE_MS and SESSION_MAX for RuntimeOptions' session_lock_timeout_ms,
session_idle_timeout_ms and max_sessions_per_runtime. Each worker's node id comes from its command line.
"""

from __future__ import annotations

import os
import threading
import time

from celery import Celery

from duroxide_celery import PostgresProvider, Runtime, RuntimeOptions

BROKER_URL = os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE_SCHEMA = os.environ.get("SHOP_DATABASE_SCHEMA")

app = Celery("sessionapp", broker=BROKER_URL)
app.conf.update(broker_connection_retry_on_startup=True)
if BROKER_URL.startswith("amqp"):
    app.conf.broker_transport_options = {"confirm_publish": True}

provider = (
    PostgresProvider.connect_with_schema(DATABASE_URL, DATABASE_SCHEMA)
    if DATABASE_SCHEMA
    else PostgresProvider.connect(DATABASE_URL)
)


def _ms(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


runtime = Runtime(
    provider,
    RuntimeOptions(
        queue_prefix=os.environ.get("SHOP_QUEUE_PREFIX") or None,
        recovery_threshold_ms=_ms("SHOP_RECOVERY_MS"),
        recovery_interval_ms=_ms("SHOP_RECOVERY_INTERVAL_MS"),
        orchestrator_lock_timeout_ms=_ms("SHOP_ORCHESTRATOR_LOCK_MS"),
        session_lock_timeout_ms=_ms("SESSION_LOCK_MS"),
        session_lock_renewal_buffer_ms=(_ms("SESSION_LOCK_MS") or 30_000) // 2,
        session_idle_timeout_ms=_ms("SESSION_IDLE_MS"),
        max_sessions_per_runtime=_ms("SESSION_MAX"),
    ),
    app=app,
)

#: This process's memory: what each session has seen so far.
STATE: dict[str, list[object]] = {}
_lock = threading.Lock()


@runtime.register_activity("Remember")
def remember(ctx, item):
    """Add `item` to this worker's memory of the session; return the node and everything it remembers."""
    time.sleep(float(os.environ.get("SESSION_STEP_S", "0")))
    with _lock:
        seen = STATE.setdefault(ctx.session_id, [])
        seen.append(item)
        return {"node": ctx.worker_id, "seen": list(seen)}


@runtime.register_orchestration("Conversation")
def conversation(ctx, args):
    """`turns` session activities in a row on one session."""
    session, turns = args["session"], args.get("turns", 3)
    replies = []
    for i in range(turns):
        replies.append((yield ctx.schedule_activity_on_session("Remember", i, session)))
    return replies


@runtime.register_orchestration("Chat")
def chat(ctx, session):
    """One step, a pause for an event, a second step. When the second step lands on a worker that does not know
    the session (its owner died), the orchestration re-hydrates the new worker from what it knows."""
    first = yield ctx.schedule_activity_on_session("Remember", "hello", session)
    yield ctx.wait_for_event("next")
    second = yield ctx.schedule_activity_on_session("Remember", "again", session)
    if second["seen"] == ["again"]:
        second = yield ctx.schedule_activity_on_session("Remember", "rehydrated:hello", session)
    return [first, second]


@runtime.register_orchestration("Chapters")
def chapters(ctx, n):
    """One session step per execution, continuing as new until the third."""
    reply = yield ctx.schedule_activity_on_session("Remember", n, "chapters")
    if n < 3:
        return (yield ctx.continue_as_new(n + 1))
    return reply
