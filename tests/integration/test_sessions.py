"""Sessions on the embedded runtime (semantics.md 2.17, issue 5 item 3): a session's activities run on the worker
that claimed it, so they share its in-memory state; idle sessions are released; a dead owner's sessions move to
another worker after the session lock expires; the per-worker cap holds. Each Runtime here is a separate worker
with its own node id."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from duroxide_celery import RuntimeOptions
from duroxide_celery.providers.schema import sessions

from .helpers import WAIT_MS, wait_until


class StatefulWorker:
    """An activity worker whose `Remember` activity keeps per-session in-memory state (like a loaded model)."""

    def __init__(self, runtime_factory: Any, node: str, **options: Any):
        self.node = node
        self.state: dict[str, list[Any]] = {}
        self.calls: list[tuple[str | None, Any]] = []
        self._lock = threading.Lock()
        self.runtime = runtime_factory(
            {},
            {"Remember": self.remember, "WhoAmI": lambda ctx, _: [ctx.worker_id, ctx.session_id]},
            options=RuntimeOptions(worker_node_id=node, orchestration_concurrency=0, **options),
        )

    def remember(self, ctx: Any, item: Any) -> dict[str, Any]:
        with self._lock:
            self.calls.append((ctx.session_id, item))
            seen = self.state.setdefault(ctx.session_id, [])
            seen.append(item)
            return {"node": ctx.worker_id, "seen": list(seen)}


def orchestrator(runtime_factory: Any, orchestrations: dict[str, Any], **options: Any) -> Any:
    """A turns-only runtime (no activity threads), so every activity runs on a StatefulWorker."""
    return runtime_factory(orchestrations, options=RuntimeOptions(worker_concurrency=0, **options))


def conversation(ctx: Any, session: str) -> list[Any]:
    replies = []
    for word in ("a", "b", "c"):
        replies.append((yield ctx.schedule_activity_on_session("Remember", word, session)))
    return replies


def session_rows(provider: Any) -> dict[str, str]:
    with provider.store.engine.connect() as conn:
        return dict(conn.execute(sa.select(sessions.c.session_id, sessions.c.owner)).all())


def test_session_activities_run_on_one_worker_and_share_its_state(runtime_factory, client, provider):
    orchestrator(runtime_factory, {"Conversation": conversation})
    workers = [StatefulWorker(runtime_factory, f"node-{i}") for i in range(2)]
    client.start_orchestration("chat-1", "Conversation", "s-1")
    replies = client.wait_for_orchestration("chat-1", WAIT_MS).output
    owner = replies[0]["node"]
    assert [r["node"] for r in replies] == [owner] * 3
    assert [r["seen"] for r in replies] == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert session_rows(provider) == {"s-1": owner}
    other = next(w for w in workers if w.node != owner)
    assert other.calls == []
    scheduled = [e for e in client.read_execution_history("chat-1", 1) if e.kind == "ActivityScheduled"]
    assert all('"session_id": "s-1"' in e.data for e in scheduled)


def test_session_id_keyword_and_activity_context(runtime_factory, client):
    def both(ctx, _):
        pinned = yield ctx.schedule_activity("WhoAmI", None, session_id="s-kw")
        plain = yield ctx.schedule_activity("WhoAmI", None)
        return [pinned, plain]

    orchestrator(runtime_factory, {"Both": both})
    worker = StatefulWorker(runtime_factory, "only-node")
    client.start_orchestration("kw-1", "Both", None)
    assert client.wait_for_orchestration("kw-1", WAIT_MS).output == [[worker.node, "s-kw"], [worker.node, None]]


def test_retry_on_session_keeps_every_attempt_on_the_owner(runtime_factory, client):
    attempts: list[str] = []

    def flaky(ctx, _):
        attempts.append(ctx.worker_id)
        if len(attempts) < 3:
            raise RuntimeError("model not warm yet")
        return ctx.worker_id

    def pinned_retry(ctx, _):
        first = yield ctx.schedule_activity_on_session("Remember", "warm-up", "s-retry")
        retried = yield ctx.schedule_activity_with_retry_on_session(
            "Flaky", None, {"max_attempts": 3, "backoff": "none"}, "s-retry"
        )
        return [first["node"], retried]

    orchestrator(runtime_factory, {"PinnedRetry": pinned_retry})
    for i in range(2):
        worker = StatefulWorker(runtime_factory, f"retry-node-{i}")
        worker.runtime.register_activity("Flaky", flaky)
    client.start_orchestration("retry-1", "PinnedRetry", None)
    owner, retried_on = client.wait_for_orchestration("retry-1", WAIT_MS).output
    assert retried_on == owner
    assert attempts == [owner] * 3


def test_session_survives_continue_as_new(runtime_factory, client):
    def chapters(ctx, n):
        reply = yield ctx.schedule_activity_on_session("Remember", n, "s-can")
        if n < 3:
            return (yield ctx.continue_as_new(n + 1))
        return reply

    orchestrator(runtime_factory, {"Chapters": chapters})
    [StatefulWorker(runtime_factory, f"can-node-{i}") for i in range(2)]
    client.start_orchestration("can-1", "Chapters", 1)
    result = client.wait_for_orchestration("can-1", WAIT_MS)
    assert result.output["seen"] == [1, 2, 3]
    assert client.list_executions("can-1") == [1, 2, 3]


def test_idle_session_is_released(runtime_factory, client, provider):
    def once(ctx, session):
        return (yield ctx.schedule_activity_on_session("Remember", "x", session))

    orchestrator(runtime_factory, {"Once": once})
    worker = StatefulWorker(runtime_factory, "idle-node", session_idle_timeout_ms=300)
    client.start_orchestration("idle-1", "Once", "s-idle")
    assert client.wait_for_orchestration("idle-1", WAIT_MS).output["node"] == worker.node
    wait_until(lambda: "s-idle" not in session_rows(provider), what="the idle session to be released")


def test_dead_owner_sessions_move_to_another_worker_after_the_lock(runtime_factory, client, provider):
    """The owner stops (a crash, as far as the store knows: it keeps its stable node id and releases nothing).
    The next activity of the conversation waits for the session lock to expire, then runs elsewhere; the
    orchestration sees the lost state ("seen" starts over) and can re-hydrate, as the guide shows."""

    def chat(ctx, session):
        first = yield ctx.schedule_activity_on_session("Remember", "hello", session)
        yield ctx.wait_for_event("next")
        second = yield ctx.schedule_activity_on_session("Remember", "again", session)
        if second["seen"] == ["again"]:  # a new worker: re-hydrate its state from what we know
            second = yield ctx.schedule_activity_on_session("Remember", "rehydrated:hello", session)
        return [first, second]

    fast = {"session_lock_timeout_ms": 1000, "session_lock_renewal_buffer_ms": 500}
    orchestrator(runtime_factory, {"Chat": chat}, recovery_interval_ms=200, recovery_threshold_ms=300)
    first_worker = StatefulWorker(runtime_factory, "doomed", **fast)
    client.start_orchestration("dead-1", "Chat", "s-dead")
    wait_until(lambda: session_rows(provider).get("s-dead") == "doomed", what="the first worker to claim the session")
    wait_until(lambda: first_worker.calls, what="the first activity to run")
    first_worker.runtime.shutdown(timeout_ms=2000)
    survivor = StatefulWorker(runtime_factory, "survivor", **fast)
    client.raise_event("dead-1", "next", None)
    first, second = client.wait_for_orchestration("dead-1", WAIT_MS).output
    assert first == {"node": "doomed", "seen": ["hello"]}
    assert second == {"node": "survivor", "seen": ["again", "rehydrated:hello"]}
    assert survivor.calls == [("s-dead", "again"), ("s-dead", "rehydrated:hello")]
    assert session_rows(provider)["s-dead"] == "survivor"


def test_max_sessions_per_runtime_spreads_sessions(runtime_factory, client):
    gate = threading.Event()

    def hold(ctx, _):
        gate.wait(10)
        return ctx.worker_id

    def one_session(ctx, session):
        return (yield ctx.schedule_activity_on_session("Hold", None, session))

    orchestrator(runtime_factory, {"OneSession": one_session})
    workers = [StatefulWorker(runtime_factory, f"cap-node-{i}", max_sessions_per_runtime=1) for i in range(2)]
    for worker in workers:
        worker.runtime.register_activity("Hold", hold)
    for i in range(2):
        client.start_orchestration(f"cap-{i}", "OneSession", f"s-cap-{i}")
    gate.set()
    nodes = sorted(client.wait_for_orchestration(f"cap-{i}", WAIT_MS).output for i in range(2))
    assert nodes == ["cap-node-0", "cap-node-1"]


def test_bad_session_ids_fail_the_orchestration_clearly(runtime_factory, client):
    def bad(ctx, _):
        yield ctx.schedule_activity_on_session("Remember", 1, "x" * 300)

    orchestrator(runtime_factory, {"Bad": bad})
    client.start_orchestration("bad-session", "Bad", None)
    result = client.wait_for_orchestration("bad-session", WAIT_MS)
    assert result.status == "Failed"
    assert "session_id is 300 characters; the limit is 256" in result.error


def test_bad_worker_node_id_is_refused_at_construction(runtime_factory):
    with pytest.raises(ValueError, match="may contain only letters, digits and - _ . @"):
        runtime_factory({}, options=RuntimeOptions(worker_node_id="bad node/id"), start=False)
    with pytest.raises(ValueError, match="at most 200 characters"):
        runtime_factory({}, options=RuntimeOptions(worker_node_id="n" * 201), start=False)


def test_shutdown_without_a_stable_node_id_releases_its_sessions(runtime_factory, client, provider):
    def once(ctx, session):
        return (yield ctx.schedule_activity_on_session("WhoAmI", None, session))

    orchestrator(runtime_factory, {"Once": once})
    worker = runtime_factory(
        {}, {"WhoAmI": lambda ctx, _: ctx.worker_id}, options=RuntimeOptions(orchestration_concurrency=0)
    )
    client.start_orchestration("release-1", "Once", "s-release")
    assert client.wait_for_orchestration("release-1", WAIT_MS).output == worker.worker_id
    assert session_rows(provider) == {"s-release": worker.worker_id}
    worker.shutdown(timeout_ms=2000)
    assert "s-release" not in session_rows(provider)
