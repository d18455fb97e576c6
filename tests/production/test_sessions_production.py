"""Sessions with real worker processes (semantics.md 2.17, DESIGN section 3): a session's steps run on the worker
that claimed it and share that process's memory; when the owner is killed (-9) the next step runs on another worker
once the session lock expires (nothing stays stranded in the dead worker's session queue) and the orchestration
re-hydrates it; a session survives continue-as-new; max_sessions_per_runtime keeps sessions apart under load.

The app is tests/production/sessionapp.py; its `Remember` activity returns the node that ran it and what that
process remembers of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REDIS_URL, Cluster, Proc
from .helpers import check_histories

APP = "tests.production.sessionapp"
SESSION_LOCK_MS = 2000


class SessionCluster(Cluster):
    """conftest's Cluster running sessionapp: an orchestrator worker, beat, and activity workers with node ids."""

    def _celery(self, name: str, args: list[str], extra_env: dict[str, str] | None, app: str = "examples.shop") -> Proc:
        return super()._celery(name, args, extra_env, APP)

    def session_worker(self, node: str, **env: str) -> Proc:
        argv = ["worker", "-Q", f"{self.prefix}.activities", "-P", "threads", "-c", "4", "-l", "INFO"]
        argv += ["-n", f"{node}-{self.prefix}@%h", "--duroxide-node-id", node]
        argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        proc = self._celery(f"worker-{node}", argv, env)
        proc.wait_for_log(" ready.")
        return proc

    def owner(self, session: str) -> str | None:
        return self.scalar("SELECT owner FROM dx_sessions WHERE session_id = :s", s=session)


@pytest.fixture
def session_cluster(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[SessionCluster]:
    cluster = SessionCluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    cluster.env["SESSION_LOCK_MS"] = str(SESSION_LOCK_MS)
    try:
        cluster.worker("orch")
        cluster.beat()
        yield cluster
    finally:
        cluster.close()


def test_session_steps_run_on_one_worker_and_share_its_memory(session_cluster: SessionCluster) -> None:
    c = session_cluster
    for node in ("s1", "s2"):
        c.session_worker(node)
    for i in range(3):
        c.client.start_orchestration(f"talk-{i}", "Conversation", {"session": f"talk-{i}", "turns": 3})
    for i in range(3):
        replies = c.client.wait_for_orchestration(f"talk-{i}", 60_000).output
        owner = replies[0]["node"]
        assert owner in ("s1", "s2")
        assert [r["node"] for r in replies] == [owner] * 3
        assert [r["seen"] for r in replies] == [[0], [0, 1], [0, 1, 2]]
        assert c.owner(f"talk-{i}") == owner
    check_histories(c)


def test_killed_session_owner_hands_the_session_to_another_worker(session_cluster: SessionCluster) -> None:
    c = session_cluster
    workers = {node: c.session_worker(node) for node in ("s1", "s2")}
    c.client.start_orchestration("chat-1", "Chat", "chat-1")
    c.wait_for(
        lambda: c.scalar("SELECT count(*) FROM dx_history WHERE instance_id = 'chat-1' AND kind = 'ActivityCompleted'"),
        "the first step of the chat",
    )
    owner = c.owner("chat-1")
    survivor = next(node for node in workers if node != owner)
    workers[owner].kill()  # kill -9 of its process group: no shutdown, its session row stays until the lock expires
    c.client.raise_event("chat-1", "next", None)
    first, second = c.client.wait_for_orchestration("chat-1", 60_000).output
    assert first == {"node": owner, "seen": ["hello"]}
    assert second == {"node": survivor, "seen": ["again", "rehydrated:hello"]}
    assert c.owner("chat-1") == survivor
    check_histories(c)


def test_a_restarted_node_with_a_stable_id_keeps_its_sessions(session_cluster: SessionCluster) -> None:
    """kill -9 of s1 and a new worker with the same --duroxide-node-id before the session lock expires: the next
    step goes to s1's session queue and runs on the restarted s1 (a new process: its memory starts empty), not on
    s2, although s2 was idle all along."""
    c = session_cluster
    c.env["SESSION_LOCK_MS"] = "60000"  # the restart must win over the lock expiry by far
    first_s1 = c.session_worker("s1")
    c.client.start_orchestration("restart-1", "Chat", "restart-1")
    c.wait_for(lambda: c.owner("restart-1") == "s1", "s1 to claim the session")
    c.wait_for(
        lambda: c.scalar(
            "SELECT count(*) FROM dx_history WHERE instance_id = 'restart-1' AND kind = 'ActivityCompleted'"
        ),
        "the first step of the chat",
    )
    c.session_worker("s2")
    first_s1.kill()
    c.session_worker("s1")
    c.client.raise_event("restart-1", "next", None)
    first, second = c.client.wait_for_orchestration("restart-1", 60_000).output
    assert first == {"node": "s1", "seen": ["hello"]}
    assert second == {"node": "s1", "seen": ["again", "rehydrated:hello"]}
    assert c.owner("restart-1") == "s1"
    check_histories(c)


def test_session_survives_continue_as_new(session_cluster: SessionCluster) -> None:
    c = session_cluster
    for node in ("s1", "s2"):
        c.session_worker(node)
    c.client.start_orchestration("book-1", "Chapters", 1)
    result = c.client.wait_for_orchestration("book-1", 60_000)
    assert result.output["seen"] == [1, 2, 3]
    assert result.output["node"] == c.owner("chapters")
    assert c.client.list_executions("book-1") == [1, 2, 3]
    check_histories(c)


def test_max_sessions_per_runtime_keeps_sessions_apart_under_load(session_cluster: SessionCluster) -> None:
    c = session_cluster
    for node in ("s1", "s2"):
        c.session_worker(node, SESSION_MAX="1", SESSION_STEP_S="0.02")
    ids = [f"load-{i}" for i in range(2)]
    for instance_id in ids:
        c.client.start_orchestration(instance_id, "Conversation", {"session": instance_id, "turns": 8})
    nodes_by_session = {}
    for instance_id in ids:
        replies = c.client.wait_for_orchestration(instance_id, 60_000).output
        assert [r["seen"] for r in replies][-1] == list(range(8))
        nodes_by_session[instance_id] = {r["node"] for r in replies}
    # Each worker may hold one session: the two sessions ran on different workers, each on one only.
    assert sorted(n for nodes in nodes_by_session.values() for n in nodes) == ["s1", "s2"]
    check_histories(c)
