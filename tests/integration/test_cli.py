"""The operator CLI against a real database (SQLite file, or a PostgreSQL schema with DUROXIDE_TEST_DB=postgres):
happy paths, honest exit codes (0 success, 1 operational failure with one line on stderr, 2 usage error), JSON
output, `--app`, and the management commands (enqueue-event, delete, prune, tree, metrics).

Most tests invoke the real command in process (click's CliRunner); the `--app` and stderr tests run
`python -m duroxide_celery.cli` as a subprocess. Where workflows must run, an embedded Runtime on the same store
in this process does it (the CLI's Client finds it and wakes it at once)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from duroxide_celery import Client, OrchestrationResult
from duroxide_celery.cli import main

from .conftest import PG_URL, Store
from .helpers import WAIT_MS, wait_for_kind

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------------------------
class Cli:
    """Runs `duroxide-celery <store options> ...` in process."""

    def __init__(self, store_args: list[str]):
        self.store_args = store_args

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = CliRunner(env=env).invoke(main, [*self.store_args, *args])
        # A Python exception escaping the CLI is a bug, whatever the exit code says.
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
        return result

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.exit_code == 0, (args, result.output)
        return result.stdout

    def fails(self, code: int, message: str, *args: str) -> Result:
        """Exit `code`; `message` on stderr, nothing on stdout (exit 1: exactly one line, `Error: <message>`)."""
        result = self(*args)
        assert result.exit_code == code, (args, result.output)
        assert result.stdout == "", (args, result.stdout)
        if code == 1:
            assert result.stderr.splitlines() == [f"Error: {message}"], (args, result.stderr)
        else:
            assert message in result.stderr, (args, result.stderr)
        return result


def store_args(store: Store) -> list[str]:
    if store.kind == "sqlite":
        return ["--db", f"sqlite:///{store.location}"]
    return ["--db", PG_URL, "--schema", store.location]


@pytest.fixture
def cli(store: Store) -> Cli:
    """The CLI on this test's store (created by `db upgrade`)."""
    runner = Cli(store_args(store))
    assert runner.ok("db", "upgrade").strip() == "schema is up to date"
    return runner


@pytest.fixture
def provider(store: Store, cli: Cli) -> Any:
    """This test's store as the embedded runtimes and clients of the test see it (after the CLI created it)."""
    return store.open()


def _greeter(ctx: Any, inp: Any) -> Any:
    return (yield ctx.schedule_activity("Hello", inp["name"]))


def _mailbox(ctx: Any, _: Any) -> Any:
    job = yield ctx.dequeue_event("jobs")
    go = yield ctx.wait_for_event("go")
    return {"job": job, "go": go}


def _waiter(ctx: Any, _: Any) -> Any:
    return (yield ctx.wait_for_event("go"))


def _stepper(ctx: Any, n: int) -> Any:
    if n < 3:
        yield ctx.wait_for_event("next")
        yield ctx.continue_as_new(n + 1)
    return n


def _leaf(ctx: Any, x: int) -> Any:
    return (yield ctx.schedule_activity("Double", x))


def _mid(ctx: Any, x: int) -> Any:
    return (yield ctx.schedule_sub_orchestration("Leaf", x))


def _root(ctx: Any, x: int) -> Any:
    return (yield ctx.schedule_sub_orchestration_with_id("Mid", "tree-child", x))


def _boom(ctx: Any, _: Any) -> Any:
    yield ctx.schedule_activity("Fail", None)


def _fail(ctx: Any, _: Any) -> Any:
    raise RuntimeError("boom")


ORCHESTRATIONS = {
    "Greeter": _greeter,
    "Mailbox": _mailbox,
    "Waiter": _waiter,
    "Stepper": _stepper,
    "Root": _root,
    "Mid": _mid,
    "Leaf": _leaf,
    "Boom": _boom,
}
ACTIVITIES = {"Hello": lambda ctx, name: f"hello {name}", "Double": lambda ctx, x: x * 2, "Fail": _fail}


@pytest.fixture
def engine(runtime_factory: Any, provider: Any) -> Client:
    """An embedded runtime running this test's orchestrations on the store; returns a Client on it."""
    runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    return Client(provider)


def _run_steps(client: Client, instance_id: str) -> None:
    """A Stepper through executions 1, 2 and 3 (completed)."""
    client.start_orchestration(instance_id, "Stepper", 1)
    for execution_id in (1, 2):
        wait_for_kind(client, instance_id, "ExternalSubscribed", execution_id)
        client.raise_event(instance_id, "next")
    assert client.wait_for_orchestration(instance_id, WAIT_MS).output == 3
    assert client.list_executions(instance_id) == [1, 2, 3]


# -- happy paths ------------------------------------------------------------------------------------------------
def test_start_status_history_list(cli: Cli, engine: Client) -> None:
    started = cli("start", "Greeter", "--id", "c1", "--input", json.dumps({"name": "x"}))
    assert (started.exit_code, started.stdout, started.stderr) == (0, "c1\n", "")  # the runtime here was woken
    assert engine.wait_for_orchestration("c1", WAIT_MS).output == "hello x"

    rows = dict(line.split(None, 1) for line in cli.ok("status", "c1").splitlines() if " " in line)
    assert rows["instance"].strip() == "c1" and rows["orchestration"].strip() == "Greeter 1.0.0"
    assert rows["status"].strip() == "Completed" and rows["output"].strip() == '"hello x"'
    assert "waiting reason" not in cli.ok("status", "c1")

    assert cli.ok("list").split() == ["c1"]
    assert cli.ok("list", "--status", "Completed").split() == ["c1"]
    assert cli.ok("list", "--status", "Running").split() == []

    history = cli.ok("history", "c1").splitlines()
    assert history[0].split()[:2] == ["id", "src"]
    kinds = [line[37:69].strip() for line in history[1:]]  # the fixed-width "kind" column
    assert kinds[0] == "OrchestrationStarted" and kinds[-1] == "OrchestrationCompleted"
    assert "ActivityCompleted" in kinds

    # A generated id is a UUID, printed.
    generated = cli.ok("start", "Greeter", "--input", json.dumps({"name": "y"})).strip()
    assert uuid.UUID(generated) and engine.wait_for_orchestration(generated, WAIT_MS).output == "hello y"


def test_raise_event_and_enqueue_event_reach_the_instance(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("m1", "Mailbox")
    assert cli.ok("enqueue-event", "m1", "jobs", "--data", json.dumps({"job": 7})).strip() == "event enqueued"
    wait_for_kind(engine, "m1", "ExternalSubscribed")
    assert cli.ok("raise-event", "m1", "go", "--data", "[1, 2]").strip() == "event raised"
    result = engine.wait_for_orchestration("m1", WAIT_MS)
    assert result.status == "Completed", result.error
    job = result.output["job"]
    assert (json.loads(job) if isinstance(job, str) else job) == {"job": 7}
    assert result.output["go"] == [1, 2]


def test_cancel_a_running_instance(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("w1", "Waiter")
    wait_for_kind(engine, "w1", "ExternalSubscribed")
    assert cli.ok("cancel", "w1", "--reason", "ops").strip() == "cancel requested"
    result = engine.wait_for_orchestration("w1", WAIT_MS)
    assert result.status == "Failed" and "ops" in (result.error or "")


# -- JSON output ------------------------------------------------------------------------------------------------
def test_json_output_of_status_list_history(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("j1", "Greeter", {"name": "j"})
    engine.wait_for_orchestration("j1", WAIT_MS)
    engine.start_orchestration("j2", "Waiter")
    wait_for_kind(engine, "j2", "ExternalSubscribed")

    status = json.loads(cli.ok("status", "j1", "--json"))
    assert status["instance_id"] == "j1" and status["orchestration_name"] == "Greeter"
    assert (status["status"], status["output"], status["error"]) == ("Completed", "hello j", None)
    assert status["execution_id"] == 1 and status["parent_instance_id"] is None
    assert isinstance(status["created_at"], int) and status["waiting_reason"] is None
    assert json.loads(cli.ok("--json", "status", "j2"))["status"] == "Running"  # the global flag too

    assert sorted(json.loads(cli.ok("list", "--json"))) == ["j1", "j2"]
    assert json.loads(cli.ok("--json", "list", "--status", "Running")) == ["j2"]

    history = json.loads(cli.ok("history", "j1", "--json"))
    assert (history["instance_id"], history["execution_id"]) == ("j1", 1)
    events = history["events"]
    assert [e["event_id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["kind"] == "OrchestrationStarted" and events[-1]["kind"] == "OrchestrationCompleted"
    assert engine.read_execution_history("j1", 1)[-1].data == events[-1]["data"]
    assert {"source_event_id", "timestamp_ms"} <= set(events[0])


def test_status_prints_the_waiting_reason_when_there_is_one(
    cli: Cli, engine: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.start_orchestration("wr", "Waiter")
    reason = "waiting for orchestration 'Nope': no worker has registered it"
    if "waiting_reason" in OrchestrationResult.__dataclass_fields__:
        real = Client.get_status

        def with_reason(self: Client, instance_id: str) -> Any:
            import dataclasses

            return dataclasses.replace(real(self, instance_id), waiting_reason=reason)

        monkeypatch.setattr(Client, "get_status", with_reason)
    else:  # before OrchestrationResult has the field, the CLI reads it with getattr
        real = Client.get_status

        def with_reason(self: Client, instance_id: str) -> Any:
            result = real(self, instance_id)
            return type("R", (), {**result.__dict__, "waiting_reason": reason})()

        monkeypatch.setattr(Client, "get_status", with_reason)
    assert f"waiting reason  {reason}" in cli.ok("status", "wr").splitlines()
    assert json.loads(cli.ok("status", "wr", "--json"))["waiting_reason"] == reason


# -- start: ids and duplicates ----------------------------------------------------------------------------------
def test_starting_an_existing_id_exits_1_and_changes_nothing(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("dup", "Waiter")
    wait_for_kind(engine, "dup", "ExternalSubscribed")
    cli.fails(1, "instance dup already exists (status Running)", "start", "Greeter", "--id", "dup", "--input", "{}")
    info = engine.get_instance_info("dup")
    assert (info.orchestration_name, info.status) == ("Waiter", "Running")
    engine.raise_event("dup", "go", "done")
    engine.wait_for_orchestration("dup", WAIT_MS)
    cli.fails(1, "instance dup already exists (status Completed)", "start", "Waiter", "--id", "dup")
    assert engine.list_executions("dup") == [1]


def test_a_start_that_loses_the_race_exits_1(cli: Cli, provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process starts the id between the CLI's check and its start: the start is ignored by the Client,
    and the CLI says so."""
    real_start = Client.start_orchestration

    def racing(self: Client, instance_id: str, name: str, input: Any = None, **options: Any) -> Any:
        real_start(Client(provider), instance_id, "Other", "first")  # the competing process wins
        return real_start(self, instance_id, name, input, **options)

    monkeypatch.setattr(Client, "start_orchestration", racing)
    cli.fails(1, "instance r1 already exists (status Running)", "start", "Greeter", "--id", "r1")
    assert Client(provider).get_instance_info("r1").orchestration_name == "Other"


@pytest.mark.parametrize(
    ("instance_id", "message"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("a::sub::b", "reserved sub-orchestration marker")],
)
def test_an_empty_or_invalid_id_is_a_usage_error(cli: Cli, instance_id: str, message: str) -> None:
    cli.fails(2, message, "start", "Greeter", "--id", instance_id)
    assert cli.ok("list") == ""


def test_bad_json_is_a_usage_error(cli: Cli) -> None:
    cli.fails(2, "--input is not valid JSON", "start", "Greeter", "--input", "{nope")
    cli.fails(2, "--data is not valid JSON", "raise-event", "x", "go", "--data", "{nope")
    cli.fails(2, "--data is not valid JSON", "enqueue-event", "x", "q", "--data", "nope")
    assert cli.ok("list") == ""


# -- finished and unknown instances -----------------------------------------------------------------------------
def test_signals_to_a_finished_instance_exit_1_naming_its_status(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("done", "Greeter", {"name": "d"})
    engine.wait_for_orchestration("done", WAIT_MS)
    engine.start_orchestration("bad", "Boom")
    assert engine.wait_for_orchestration("bad", WAIT_MS).status == "Failed"
    cli.fails(1, "instance done is Completed: nothing to cancel", "cancel", "done")
    cli.fails(1, "instance bad is Failed: nothing to cancel", "cancel", "bad", "--reason", "x")
    cli.fails(1, "instance done is Completed: the event was not delivered", "raise-event", "done", "go")
    cli.fails(1, "instance bad is Failed: the message was not delivered", "enqueue-event", "bad", "jobs")
    # Nothing was queued for them.
    assert engine.get_queue_depths().orchestrator_queue == 0


def test_unknown_instances_exit_1(cli: Cli) -> None:
    for args in (
        ("status", "missing"),
        ("status", "missing", "--json"),
        ("history", "missing"),
        ("raise-event", "missing", "go"),
        ("enqueue-event", "missing", "q"),
        ("cancel", "missing"),
        ("tree", "missing"),
        ("prune", "missing"),
        ("delete", "missing"),
        ("delete", "missing", "--force"),
    ):
        cli.fails(1, "no instance 'missing'", *args)


def test_history_of_an_execution_that_does_not_exist(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("one", "Greeter", {"name": "o"})
    engine.wait_for_orchestration("one", WAIT_MS)
    cli.fails(1, "instance one has no execution 7 (executions: 1)", "history", "one", "--execution", "7")
    cli.fails(2, "0 is not in the range x>=1", "history", "one", "--execution", "0")

    _run_steps(engine, "steps")
    second = json.loads(cli.ok("history", "steps", "--execution", "2", "--json"))
    assert second["execution_id"] == 2 and second["events"][-1]["kind"] == "OrchestrationContinuedAsNew"
    assert json.loads(cli.ok("history", "steps", "--json"))["events"][-1]["kind"] == "OrchestrationCompleted"
    cli.ok("prune", "steps")
    cli.fails(1, "instance steps has no execution 1 (executions: 3)", "history", "steps", "--execution", "1")


# -- the store: missing files, unusable stores ------------------------------------------------------------------
ALL_COMMANDS = [
    ("list",),
    ("status", "x"),
    ("history", "x"),
    ("start", "Greeter", "--id", "x"),
    ("raise-event", "x", "go"),
    ("enqueue-event", "x", "q"),
    ("cancel", "x"),
    ("delete", "x"),
    ("prune", "x"),
    ("tree", "x"),
    ("metrics",),
]


def test_a_mistyped_sqlite_path_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "store.db"
    runner = Cli(["--db", f"sqlite:///{missing}"])
    for args in ALL_COMMANDS:
        runner.fails(1, f"no database file at {missing} (run 'duroxide-celery db upgrade' to create one)", *args)
        assert not missing.parent.exists()
    # A missing file in an existing directory: same answer, still no file.
    sibling = tmp_path / "store.db"
    Cli(["--db", f"sqlite:///{sibling}"]).fails(
        1, f"no database file at {sibling} (run 'duroxide-celery db upgrade' to create one)", "list"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # db upgrade is the one command that creates a store.
    assert runner.ok("db", "upgrade").strip() == "schema is up to date"
    assert missing.is_file()
    assert runner.ok("list") == "" and runner.ok("--json", "list").strip() == "[]"


def test_a_store_nobody_created_is_not_created(tmp_path: Path, store: Store) -> None:
    """An empty SQLite file, a mistyped PostgreSQL schema: every command but db upgrade refuses, creating nothing."""
    if store.kind == "sqlite":
        empty = tmp_path / "empty.db"
        empty.touch()
        runner = Cli(["--db", f"sqlite:///{empty}"])
        message = f"no duroxide store in sqlite:///{empty} (run 'duroxide-celery db upgrade' to create one)"
    else:
        runner = Cli(["--db", PG_URL, "--schema", store.location])  # the fixture's schema: not created yet
        where = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
        message = (
            f"no duroxide store in schema {store.location} of {where} (run 'duroxide-celery db upgrade' to create one)"
        )
    for args in ALL_COMMANDS:
        runner.fails(1, message, *args)
    if store.kind == "sqlite":
        assert empty.stat().st_size == 0
    else:
        engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.NullPool)
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s"),
                {"s": store.location},
            ).scalar()
        engine.dispose()
        assert found == 0
    runner.ok("db", "upgrade")
    assert runner.ok("list") == ""


def test_an_unusable_store_exits_1_with_the_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    result = Cli(["--db", f"sqlite:///{garbage}"])("list")
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert (
        line.startswith(f"Error: cannot use the duroxide store at sqlite:///{garbage}: ") and "not a database" in line
    )

    unreachable = Cli(["--db", "postgresql://postgres:secret@127.0.0.1:1/none"])("list")
    assert unreachable.exit_code == 1 and unreachable.stdout == ""
    (line,) = unreachable.stderr.splitlines()
    assert line.startswith("Error: cannot use the duroxide store at postgresql+psycopg://postgres:***@127.0.0.1:1/none")
    assert "secret" not in unreachable.output


def test_a_store_from_a_newer_version_exits_1(cli: Cli, store: Store, provider: Any) -> None:
    with provider.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE dx_alembic_version SET version_num = '9999_from_the_future'"))
    provider.dispose()
    result = cli("list")
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "has a schema this version of duroxide-celery does not know" in line and "9999_from_the_future" in line


def test_store_options_usage(tmp_path: Path, store: Store) -> None:
    no_db = Cli([])("list", env={"DUROXIDE_DB_URL": "", "DUROXIDE_APP": ""})
    assert no_db.exit_code == 1 and "no database: pass --db URL or --app MODULE" in no_db.stderr
    sqlite = Cli(["--db", f"sqlite:///{tmp_path / 'x.db'}", "--schema", "s1"])
    sqlite.fails(2, "--schema is for PostgreSQL", "db", "upgrade")
    Cli(["--db", "mysql://x/y"]).fails(2, "unsupported database URL", "list")
    Cli(["--db", PG_URL, "--schema", "bad-name"]).fails(2, "invalid PostgreSQL schema name 'bad-name'", "list")
    Cli(["--db", "sqlite://"]).fails(
        1, "sqlite:// is an in-memory database, empty in every process: give a file (sqlite:///path)", "list"
    )


def test_schema_and_database_from_the_environment(store: Store, cli: Cli, engine: Client) -> None:
    engine.start_orchestration("env1", "Greeter", {"name": "e"})
    engine.wait_for_orchestration("env1", WAIT_MS)
    if store.kind == "sqlite":
        env = {"DUROXIDE_DB_URL": f"sqlite:///{store.location}", "DUROXIDE_DB_SCHEMA": ""}
    else:
        env = {"DUROXIDE_DB_URL": PG_URL, "DUROXIDE_DB_SCHEMA": store.location}
    result = Cli([])("list", env=env)
    assert result.exit_code == 0 and result.stdout.split() == ["env1"]


# -- delete, prune, tree, metrics -------------------------------------------------------------------------------
def test_delete(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("run", "Waiter")
    wait_for_kind(engine, "run", "ExternalSubscribed")
    cli.fails(
        1,
        "Instance run is still running. Use force=True to delete it anyway, or cancel it first.",
        "delete",
        "run",
    )
    assert engine.get_instance_info("run") is not None
    out = cli.ok("delete", "run", "--force").strip()
    assert out.startswith("deleted: 1 instances deleted, 1 executions deleted, ")
    assert engine.get_instance_info("run") is None

    engine.start_orchestration("tree-root", "Root", 21)
    assert engine.wait_for_orchestration("tree-root", WAIT_MS).output == 42
    cli.fails(
        1,
        "Cannot delete sub-orchestration tree-child directly. Delete the root orchestration instead.",
        "delete",
        "tree-child",
    )
    counts = json.loads(cli.ok("delete", "tree-root", "--json"))
    assert counts["instances_deleted"] == 3 and counts["executions_deleted"] == 3 and counts["events_deleted"] > 0
    assert engine.list_all_instances() == []

    cli.fails(2, "give an INSTANCE_ID or --finished", "delete")
    cli.fails(2, "give an INSTANCE_ID or --finished", "delete", "x", "--finished")
    cli.fails(2, "--completed-before and --limit go with --finished", "delete", "x", "--limit", "3")


def test_delete_finished_in_bulk(cli: Cli, engine: Client) -> None:
    for i in range(3):
        engine.start_orchestration(f"g{i}", "Greeter", {"name": str(i)})
        engine.wait_for_orchestration(f"g{i}", WAIT_MS)
    engine.start_orchestration("still", "Waiter")
    wait_for_kind(engine, "still", "ExternalSubscribed")

    assert json.loads(cli.ok("delete", "--finished", "--completed-before", "0", "--json"))["instances_deleted"] == 0
    assert json.loads(cli.ok("delete", "--finished", "--limit", "1", "--json"))["instances_deleted"] == 1
    assert len(engine.list_all_instances()) == 3
    out = cli.ok("delete", "--finished", "--completed-before", "2999-01-01T00:00:00").strip()
    assert out.startswith("deleted: 2 instances deleted")
    assert engine.list_all_instances() == ["still"]  # the running one stays
    cli.fails(2, "is not epoch ms, an ISO-8601 time or an age", "delete", "--finished", "--completed-before", "soon")


def test_prune(cli: Cli, engine: Client) -> None:
    _run_steps(engine, "p1")
    _run_steps(engine, "p2")
    first_events = len(engine.read_execution_history("p1", 1))

    cli.fails(2, "give INSTANCE_IDs or --all", "prune")
    cli.fails(2, "give INSTANCE_IDs or --all", "prune", "p1", "--all")
    cli.fails(2, "--instances-completed-before and --limit go with --all", "prune", "p1", "--limit", "2")
    cli.fails(1, "no instance 'nobody'", "prune", "p1", "nobody")  # all ids exist, or nothing is pruned
    assert engine.list_executions("p1") == [1, 2, 3]

    # Executions that completed before a time long ago: none.
    assert cli.ok("prune", "p1", "--completed-before", "1d").strip() == (
        "pruned: 1 instances processed, 0 executions deleted, 0 events deleted"
    )
    assert cli.ok("prune", "p1", "--keep-last", "2").strip() == (
        f"pruned: 1 instances processed, 1 executions deleted, {first_events} events deleted"
    )
    assert engine.list_executions("p1") == [2, 3]
    bulk = json.loads(cli.ok("prune", "--all", "--json"))
    assert bulk["instances_processed"] == 2 and bulk["executions_deleted"] == 3
    assert engine.list_executions("p1") == [3] and engine.list_executions("p2") == [3]
    assert engine.get_status("p1").output == 3


def test_tree(cli: Cli, engine: Client) -> None:
    engine.start_orchestration("tree-root", "Root", 21)
    assert engine.wait_for_orchestration("tree-root", WAIT_MS).output == 42
    (grandchild,) = [i for i in engine.list_all_instances() if i.startswith("tree-child::sub::")]
    assert cli.ok("tree", "tree-root").splitlines() == [
        "tree-root  Root  Completed",
        "  tree-child  Mid  Completed",
        f"    {grandchild}  Leaf  Completed",
    ]
    assert cli.ok("tree", "tree-child").splitlines() == [
        "tree-child  Mid  Completed",
        f"  {grandchild}  Leaf  Completed",
    ]
    tree = json.loads(cli.ok("tree", "tree-root", "--json"))
    assert (tree["root_id"], tree["size"]) == ("tree-root", 3)
    assert [(r["instance_id"], r["parent_instance_id"], r["depth"]) for r in tree["instances"]] == [
        ("tree-root", None, 0),
        ("tree-child", "tree-root", 1),
        (grandchild, "tree-child", 2),
    ]


def test_metrics(cli: Cli, engine: Client) -> None:
    empty = json.loads(cli.ok("metrics", "--json"))
    assert empty["system"]["total_instances"] == 0 and set(empty["queue_depths"]) == {
        "orchestrator_queue",
        "worker_queue",
        "timer_queue",
    }
    engine.start_orchestration("m-ok", "Greeter", {"name": "m"})
    engine.wait_for_orchestration("m-ok", WAIT_MS)
    engine.start_orchestration("m-bad", "Boom")
    engine.wait_for_orchestration("m-bad", WAIT_MS)
    engine.start_orchestration("m-run", "Waiter")
    wait_for_kind(engine, "m-run", "ExternalSubscribed")

    document = json.loads(cli.ok("--json", "metrics"))
    system = document["system"]
    assert (system["total_instances"], system["running_instances"]) == (3, 1)
    assert (system["completed_instances"], system["failed_instances"], system["total_executions"]) == (1, 1, 3)
    assert system["total_events"] == engine.get_system_metrics().total_events > 0
    text = dict(line.rsplit(None, 1) for line in cli.ok("metrics").splitlines())
    assert {k.strip(): int(v) for k, v in text.items()} == {
        **{k.replace("_", " "): v for k, v in system.items()},
        **{k.replace("_", " "): v for k, v in document["queue_depths"].items()},
    }


# -- --app ------------------------------------------------------------------------------------------------------
APP_MODULE = """
import os
from celery import Celery
from duroxide_celery import PostgresProvider, Runtime, RuntimeOptions, SqliteProvider

app = Celery("cliapp", broker="memory://", set_as_current=False)
schema = os.environ.get("CLIAPP_SCHEMA")
provider = (
    PostgresProvider.connect_with_schema(os.environ["CLIAPP_DB"], schema)
    if schema
    else SqliteProvider.open(os.environ["CLIAPP_DB"])
)
runtime = Runtime(provider, RuntimeOptions(queue_prefix="cliapp"), app=app)
"""


def _app_env(store: Store) -> dict[str, str]:
    if store.kind == "sqlite":
        return {"CLIAPP_DB": store.location, "CLIAPP_SCHEMA": ""}
    return {"CLIAPP_DB": PG_URL, "CLIAPP_SCHEMA": store.location}


def _write_app(tmp_path: Path) -> str:
    name = f"cliapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE)
    return name


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m duroxide_celery.cli ...` as a real process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DUROXIDE_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "duroxide_celery.cli", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_app_names_the_store_and_queues(tmp_path: Path, store: Store) -> None:
    """`--app module` (a real process, the module on PYTHONPATH): the app's Runtime's store is used."""
    name = _write_app(tmp_path)
    # The checkout after the app: the CLI process runs the duroxide_celery under test, not another installed copy.
    env = {**_app_env(store), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    if store.kind == "sqlite":  # the CLI refuses a store the app's Runtime names but nobody created
        missing = _run(["--app", name, "list"], env, elsewhere)
        assert missing.returncode == 1 and missing.stdout == ""
        assert missing.stderr.splitlines() == [
            f"Error: no database file at {store.location} (run 'duroxide-celery db upgrade' to create one)"
        ]
        assert not Path(store.location).exists()
    upgrade = _run(["--app", name, "db", "upgrade"], env, elsewhere)
    assert upgrade.returncode == 0, upgrade.stderr
    started = _run(["--app", name, "start", "Greeter", "--id", "a1", "--input", '{"name": "app"}'], env, elsewhere)
    assert (started.returncode, started.stdout, started.stderr) == (0, "a1\n", "")  # woken through the app: no warning
    duplicate = _run(["-A", f"{name}:app", "start", "Greeter", "--id", "a1"], env, elsewhere)
    assert duplicate.returncode == 1 and duplicate.stdout == ""
    assert duplicate.stderr.splitlines() == ["Error: instance a1 already exists (status Running)"]
    # DUROXIDE_APP works like --app; the app's Runtime wins over a store named only by the environment.
    other = tmp_path / "other" / "x.db"
    by_env = _run(
        ["status", "a1", "--json"], {**env, "DUROXIDE_APP": name, "DUROXIDE_DB_URL": f"sqlite:///{other}"}, elsewhere
    )
    assert by_env.returncode == 0 and json.loads(by_env.stdout)["orchestration_name"] == "Greeter"
    assert not other.parent.exists()

    provider = store.open()
    info = Client(provider).get_instance_info("a1")
    assert (info.orchestration_name, info.status) == ("Greeter", "Running")


def test_app_wakes_workers_through_the_app(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wake-up goes out on the app's broker, to the app's Runtime's queue, named for Flower."""
    name = _write_app(tmp_path)
    for key, value in _app_env(store).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    sent: list[dict[str, Any]] = []
    real_send = module.app.send_task

    def spy(task_name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append({"name": task_name, **kwargs})
        return real_send(task_name, *args, **kwargs)

    monkeypatch.setattr(module.app, "send_task", spy)
    runner = Cli(["--app", name])
    runner.ok("db", "upgrade")
    assert runner.ok("start", "Greeter", "--id", "w1", "--input", '{"name": "w"}').strip() == "w1"
    (message,) = sent
    assert (message["name"], message["args"]) == ("duroxide.turn", ["w1"])
    assert message["queue"].name == "cliapp.orchestrator" and message["shadow"] == "orch:Greeter#w1"

    sent.clear()
    assert runner.ok("raise-event", "w1", "go").strip() == "event raised"
    assert [m["shadow"] for m in sent] == ["orch:Greeter#w1"]


def test_app_usage_errors(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _write_app(tmp_path)
    for key, value in _app_env(store).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    Cli(["--app", "no_such_module_xyz"]).fails(2, "cannot load Celery app 'no_such_module_xyz'", "list")
    Cli(["--app", name, "--db", "sqlite:///x.db"]).fails(2, "--db cannot be combined with --app", "list")
    Cli(["--app", name, "--broker", "memory://"]).fails(2, "--broker cannot be combined with --app", "list")
    Cli(["--app", name, "--queue-prefix", "x"]).fails(2, "--queue-prefix cannot be combined with --app", "list")
    Cli(["--app", "json"]).fails(2, "cannot load Celery app 'json'", "list")
    (tmp_path / f"{name}_broken.py").write_text("raise RuntimeError('bad settings')\n")
    Cli(["--app", f"{name}_broken"]).fails(
        1, f"importing Celery app '{name}_broken' failed: RuntimeError: bad settings", "list"
    )
    (tmp_path / f"{name}_number.py").write_text("app = 3\n")
    Cli(["--app", f"{name}_number:app"]).fails(2, f"'{name}_number:app' is a int, not a Celery app", "list")
    # An app without a Runtime only wakes workers: the store comes from --db.
    (tmp_path / f"{name}_plain.py").write_text("from celery import Celery\napp = Celery('plain', broker='memory://')\n")
    plain = Cli(["--app", f"{name}_plain", *store_args(store)])
    plain.ok("db", "upgrade")
    assert plain.ok("list") == ""


# -- a real process: exit codes and stderr as a shell sees them -------------------------------------------------
def test_exit_codes_of_the_real_command(tmp_path: Path, store: Store, cli: Cli) -> None:
    args = store_args(store)
    ok = _run([*args, "start", "Greeter", "--id", "s1"], {}, ROOT)
    assert ok.returncode == 0 and ok.stdout == "s1\n"
    # Nothing in that process could wake a worker: it says how the work will be delivered.
    assert ok.stderr.splitlines() == [
        "note: no --app or --broker: workers pick this up at their next recovery sweep (seconds)"
    ]
    woken = _run([*args, "--broker", "memory://", "start", "Greeter", "--id", "s2"], {}, ROOT)
    assert (woken.returncode, woken.stdout, woken.stderr) == (0, "s2\n", "")
    dup = _run([*args, "start", "Greeter", "--id", "s1"], {}, ROOT)
    assert (dup.returncode, dup.stdout) == (1, "")
    assert dup.stderr.splitlines() == ["Error: instance s1 already exists (status Running)"]
    empty = _run([*args, "start", "Greeter", "--id", ""], {}, ROOT)
    assert empty.returncode == 2 and "instance id must not be empty" in empty.stderr
    missing = _run([*args, "cancel", "nobody"], {}, ROOT)
    assert (missing.returncode, missing.stderr.splitlines()) == (1, ["Error: no instance 'nobody'"])
