"""Flower over a real deployment reads as a list of workflow steps (DESIGN section 3): each turn and activity is
named by its `shadow` (`orch:<Orchestration>#<instance>`, `act:<Activity>#<instance>`), `args:<id>` finds an
instance's steps, and task arguments show ids, never payloads."""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request

from .conftest import Cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flower_lists_workflow_steps(redis_cluster: Cluster) -> None:
    cluster = redis_cluster
    port = _free_port()
    cluster.flower(port)  # first, so it sees every task event
    cluster.standard()
    ids = [f"flow-{i}" for i in range(3)]
    for i, instance_id in enumerate(ids):
        cluster.client.start_orchestration(instance_id, "Pipeline", 1000 + i)
    cluster.wait_all_terminal(ids)

    def tasks(search: str | None = None) -> dict:
        query = "?" + urllib.parse.urlencode({"search": search}) if search else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks{query}", timeout=5) as response:
            return json.load(response)

    def names(found: dict) -> set[str]:
        return {t.get("name") for t in found.values()}

    wanted = {f"orch:Pipeline#{ids[0]}", f"act:CheckHealth#{ids[0]}"}
    cluster.wait_for(lambda: wanted <= names(tasks()), f"Flower to list {wanted}")
    everything = tasks()
    assert any(str(n).startswith("orch:ApprovalWithTimeout#") for n in names(everything)), names(everything)
    # Every turn is named after its orchestration, including those woken by a timer or by a child's completion.
    assert not [n for n in names(everything) if str(n).startswith("orch:#")], names(everything)
    for task in everything.values():
        assert "item-100" not in json.dumps(task.get("args")), task  # CheckHealth's input stays out of Flower
    # Flower learns of tasks from the workers' event stream, asynchronously: wait until it has heard of both steps.
    steps = {f"orch:Pipeline#{ids[1]}", f"act:CheckHealth#{ids[1]}"}
    cluster.wait_for(lambda: steps <= names(tasks(f"args:{ids[1]}")), f"Flower's search to find {steps}")
    mine = tasks(f"args:{ids[1]}")
    assert all(ids[1] in str(t.get("args")) for t in mine.values()), mine
    assert steps <= names(mine), mine
