"""`duroxide-celery schedule ...` against a real store (the CLI fixtures of test_cli.py): every subcommand, its
JSON output, and one-line errors with exit status 1 for bad definitions and unknown schedules."""

from __future__ import annotations

import json
from typing import Any

from duroxide_celery import Client

from . import test_cli
from .helpers import WAIT_MS, wait_until
from .test_cli import Cli

# test_cli's fixtures: the CLI on this test's store (created by `db upgrade`), and that store's provider.
cli = test_cli.cli
provider = test_cli.provider

#: 2030-01-01T00:00:00Z in epoch ms: ticks the test's runtime never reaches on the real clock.
BASE = 1893456000000


def test_schedule_commands(cli: Cli, provider: Any, runtime_factory: Any) -> None:
    runtime_factory({"Echo": lambda ctx, value: value})
    out = cli.ok(
        "schedule", "create", "nightly", "Echo", "--cron", "30 2 * * *", "--timezone", "America/New_York",
        "--input", '{"n": 1}', "--start-at", "2030-01-01T00:00:00Z", "--overlap", "buffer_one",
    )  # fmt: skip
    assert out == "schedule nightly created; next ticks (UTC): 2030-01-01 07:30:00.000, 2030-01-02 07:30:00.000, " + (
        "2030-01-03 07:30:00.000\n"
    )
    cli.fails(1, "schedule 'nightly' already exists (delete it first)", "schedule", "create", "nightly", "Echo",
              "--every-ms", "5000")  # fmt: skip
    cli.fails(1, "cron '99 * * * *' is not a valid cron expression: [99 * * * *] is not acceptable, out of range",
              "schedule", "create", "bad", "Echo", "--cron", "99 * * * *")  # fmt: skip
    cli.fails(1, "give exactly one of cron= and every_ms=", "schedule", "create", "bad", "Echo")
    cli.fails(2, "--input is not valid JSON", "schedule", "create", "bad", "Echo", "--every-ms", "5000", "--input", "{")

    cli.ok("schedule", "create", "every", "Echo", "--every-ms", "3600000", "--start-at", str(BASE), "--paused")
    listed = cli.ok("schedule", "list").splitlines()
    assert listed == [
        "every\tEcho\tevery 3600000 ms\tskip\tpaused\t2030-01-01 00:00:00.000\t-",
        "nightly\tEcho\tcron '30 2 * * *' America/New_York\tbuffer_one\tactive\t2030-01-01 07:30:00.000\t-",
    ]
    document = json.loads(cli.ok("schedule", "get", "nightly", "--json"))
    assert (document["schedule_id"], document["input"], document["overlap"], document["paused"]) == (
        "nightly",
        {"n": 1},
        "buffer_one",
        False,
    )
    assert document["next_fire_times"][0] == BASE + 7 * 3600_000 + 30 * 60_000
    assert [d["schedule_id"] for d in json.loads(cli.ok("--json", "schedule", "list"))] == ["every", "nightly"]

    updated = json.loads(cli.ok("schedule", "update", "nightly", "--every-ms", "60000", "--input", "5", "--json"))
    assert (updated["cron"], updated["every_ms"], updated["input"]) == (None, 60000, 5)
    cli.fails(2, "give at least one field to change", "schedule", "update", "nightly")
    assert cli.ok("schedule", "pause", "nightly") == "schedule nightly paused\n"
    assert json.loads(cli.ok("schedule", "get", "nightly", "--json"))["paused"] is True
    assert cli.ok("schedule", "resume", "nightly") == "schedule nightly resumed\n"

    started = cli.ok("schedule", "trigger", "every").strip()
    assert started.startswith("every@") and started.endswith("Z")
    client = Client(provider)
    assert client.wait_for_orchestration(started, WAIT_MS).status == "Completed"
    wait_until(lambda: "(Completed)" in cli.ok("schedule", "get", "every"), what="the triggered run listed")
    shown = cli.ok("schedule", "get", "every")
    assert "state            paused" in shown
    assert f"triggered  {started} (Completed)" in shown

    assert cli.ok("schedule", "delete", "every") == "schedule every deleted\n"
    for command in ("get", "pause", "resume", "delete", "trigger"):
        cli.fails(1, "schedule 'every' not found", "schedule", command, "every")
    assert client.get_status(started).status == "Completed"  # its instances stay
