"""The operator CLI against a real database: happy paths and clear, non-zero failures."""

from __future__ import annotations

import json

from click.testing import CliRunner

from duroxide_celery.cli import main


def run(db_url: str, *args: str):
    return CliRunner().invoke(main, ["--db", db_url, *args])


def test_start_status_history_list_cancel(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run(url, "db", "upgrade").exit_code == 0
    started = run(url, "start", "Greeter", "--id", "c1", "--input", json.dumps({"name": "x"}))
    assert started.exit_code == 0 and started.output.strip() == "c1"
    status = run(url, "status", "c1")
    assert status.exit_code == 0
    assert "Greeter" in status.output and "Running" in status.output
    assert run(url, "list").output.split() == ["c1"]
    assert run(url, "list", "--status", "Completed").output.split() == []
    assert run(url, "raise-event", "c1", "go", "--data", "1").exit_code == 0
    assert run(url, "cancel", "c1", "--reason", "ops").output.strip() == "cancel requested"
    history = run(url, "history", "c1")
    assert history.exit_code == 0 and history.output.splitlines()[0].split()[:2] == ["id", "src"]


def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    bad_json = run(url, "start", "Greeter", "--input", "{nope")
    assert bad_json.exit_code == 2 and "--input is not valid JSON" in bad_json.output
    unknown = run(url, "status", "missing")
    assert unknown.exit_code == 1 and "no instance 'missing'" in unknown.output
    assert run(url, "cancel", "missing").exit_code == 1
    assert run(url, "raise-event", "missing", "go").exit_code == 1
    unreachable = run("postgresql://postgres@127.0.0.1:1/none", "list")
    assert unreachable.exit_code == 1 and "database unreachable" in unreachable.output
    no_db = CliRunner(env={"DUROXIDE_DB_URL": ""}).invoke(main, ["list"])
    assert no_db.exit_code == 1 and "no database" in no_db.output
