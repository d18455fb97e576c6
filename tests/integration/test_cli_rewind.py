"""The CLI's rewind, restart and start --if-exists (issue 16 part 3): outputs, --json, exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from duroxide_celery import Client

from .helpers import WAIT_MS, kinds
from .test_cli import Cli, cli, provider  # noqa: F401 - fixtures: the CLI and the embedded runtime on its store

STATE = {"fixed": False}


def _flaky(ctx: Any, x: int) -> int:
    if not STATE["fixed"]:
        raise ValueError("not yet")
    return x + 1


def _step(ctx: Any, x: int) -> Any:
    return (yield ctx.schedule_activity("Flaky", x))


@pytest.fixture
def engine(runtime_factory: Any, provider: Any) -> Client:  # noqa: F811 - the imported fixture
    STATE["fixed"] = False
    runtime_factory({"Step": _step}, {"Flaky": _flaky})
    return Client(provider)


def test_rewind_and_restart_commands(cli: Cli, engine: Client) -> None:  # noqa: F811
    assert cli.ok("start", "Step", "--id", "cr1", "--input", "1") == "cr1\n"
    assert engine.wait_for_orchestration("cr1", WAIT_MS).status == "Failed"
    cli.fails(2, "Missing option '--reason'", "rewind", "cr1")
    cli.fails(1, "Instance nope not found", "rewind", "nope", "--reason", "x")

    STATE["fixed"] = True
    assert json.loads(cli.ok("rewind", "cr1", "--reason", "fixed Flaky", "--json")) == {
        "instance_id": "cr1",
        "rewound": ["cr1"],
    }
    assert engine.wait_for_orchestration("cr1", WAIT_MS).output == 2
    assert kinds(engine, "cr1").count("OrchestrationRewound") == 1
    cli.fails(
        1,
        "cannot rewind instance cr1: it is Completed; only a Failed instance can be rewound (restart a finished "
        "instance with Client.restart)",
        "rewind",
        "cr1",
        "--reason",
        "again",
    )

    assert cli.ok("restart", "cr1") == "cr1:restart-1\n"
    assert json.loads(cli.ok("restart", "cr1", "--new-id", "cr1-b", "--json")) == {
        "instance_id": "cr1-b",
        "restarted_from": "cr1",
    }
    assert engine.wait_for_orchestration("cr1-b", WAIT_MS).output == 2
    assert engine.get_instance_info("cr1:restart-1").restarted_from == "cr1"
    assert json.loads(cli.ok("status", "cr1:restart-1", "--json"))["restarted_from"] == "cr1"
    assert "restarted from  cr1" in cli.ok("status", "cr1-b").splitlines()
    cli.fails(1, "Instance cr1-b already exists", "restart", "cr1", "--new-id", "cr1-b")
    cli.fails(1, "Instance nope not found", "restart", "nope")


def test_start_if_exists(cli: Cli, engine: Client) -> None:  # noqa: F811
    STATE["fixed"] = True
    assert json.loads(cli.ok("start", "Step", "--id", "cs1", "--input", "1", "--json")) == {
        "instance_id": "cs1",
        "outcome": "created",
        "execution_id": 1,
    }
    assert engine.wait_for_orchestration("cs1", WAIT_MS).output == 2
    cli.fails(1, "instance cs1 already exists (status Completed)", "start", "Step", "--id", "cs1")
    kept = cli("start", "Step", "--id", "cs1", "--if-exists", "keep")
    assert (kept.exit_code, kept.stdout) == (0, "cs1\n")
    assert "kept, nothing started" in kept.stderr
    restarted = cli.ok("start", "Step", "--id", "cs1", "--input", "5", "--if-exists", "restart_if_finished", "--json")
    assert json.loads(restarted) == {"instance_id": "cs1", "outcome": "restarted", "execution_id": 2}
    assert engine.wait_for_orchestration("cs1", WAIT_MS).output == 6
    cli.fails(2, "Invalid value for '--if-exists'", "start", "Step", "--if-exists", "replace")
