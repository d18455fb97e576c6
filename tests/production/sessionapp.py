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

from tests.production.app_env import env_ms, production_runtime

lock_ms = env_ms("SESSION_LOCK_MS")
app, runtime = production_runtime(
    "sessionapp",
    session_lock_timeout_ms=lock_ms,
    session_lock_renewal_buffer_ms=(lock_ms or 30_000) // 2,
    session_idle_timeout_ms=env_ms("SESSION_IDLE_MS"),
    max_sessions_per_runtime=env_ms("SESSION_MAX"),
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
