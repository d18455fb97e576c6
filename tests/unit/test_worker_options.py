"""`celery worker --duroxide-tag-filter/--duroxide-node-id` (duroxide_celery/worker_options.py): value parsing and
the queues a worker built with them consumes (no broker connection: the WorkController is only constructed).
tests/production/test_worker_tags.py runs real worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from duroxide_celery import Runtime, RuntimeOptions, SqliteProvider, TagFilter
from duroxide_celery.worker_options import check_node_id, parse_cli_tag_filter


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("default_only", TagFilter.DEFAULT_ONLY),
        ("any", TagFilter.ANY),
        ("none", TagFilter.NONE),
        ("gpu", TagFilter.tags(["gpu"])),
        (" gpu , cpu ", TagFilter.tags(["gpu", "cpu"])),
        ("default_and:gpu", TagFilter.default_and(["gpu"])),
        ("default_and:gpu,cpu", TagFilter.default_and(["gpu", "cpu"])),
        ('{"tags": ["a:b"]}', '{"tags": ["a:b"]}'),
    ],
)
def test_cli_filters_read_as_runtime_options_filters(value: str, expected: str) -> None:
    assert parse_cli_tag_filter(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty tag filter"),
        ("gpu,", "non-empty"),
        ("bad tag", "may contain only"),
        ("a,b,c,d,e,f", "at most 5 tags"),
        ("default_and:", "non-empty"),
        ('{"tags": []}', "at least one tag"),
        ('{"tagz": ["gpu"]}', "invalid worker_tag_filter"),
    ],
)
def test_bad_cli_filters_raise(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cli_tag_filter(value)


def test_node_ids_are_checked() -> None:
    assert check_node_id("gpu-1.rack_2@dc") == "gpu-1.rack_2@dc"
    assert check_node_id("n" * 200) == "n" * 200
    for bad, message in [("", "non-empty"), ("n" * 201, "at most 200"), ("a b", "may contain only")]:
        with pytest.raises(ValueError, match=message):
            check_node_id(bad)


def _worker(tmp_path: Path, options: RuntimeOptions | None = None, queues: list[str] | None = None, **kw):
    app = Celery("wo-test", broker="memory://", set_as_current=False)
    runtime = Runtime(SqliteProvider.open(str(tmp_path / "store.db")), options or RuntimeOptions(), app=app)
    app.WorkController(
        queues=queues, pool_cls="solo", without_mingle=True, without_gossip=True, without_heartbeat=True, **kw
    )
    return runtime, sorted(app.amqp.queues.consume_from)


def test_options_set_the_node_id_and_add_the_filter_queues_to_those_of_q(tmp_path: Path) -> None:
    runtime, queues = _worker(
        tmp_path, queues=["duroxide.orchestrator"], duroxide_tag_filter="gpu,cpu", duroxide_node_id="gpu-1"
    )
    assert queues == ["duroxide.activities.cpu", "duroxide.activities.gpu", "duroxide.orchestrator"]
    assert runtime.worker_id == runtime.options.worker_node_id == "gpu-1"
    assert runtime.options.worker_tag_filter == TagFilter.tags(["gpu", "cpu"])
    assert runtime.worker_activity_queues() == ["duroxide.activities.cpu", "duroxide.activities.gpu"]


def test_without_q_a_filter_without_untagged_work_drops_the_untagged_queue(tmp_path: Path) -> None:
    _, queues = _worker(tmp_path, duroxide_tag_filter="gpu")
    assert queues == ["celery", "duroxide.activities.gpu", "duroxide.orchestrator"]  # the app's queue too


def test_the_command_line_overrides_runtime_options(tmp_path: Path) -> None:
    options = RuntimeOptions(worker_tag_filter=TagFilter.tags(["cpu"]), worker_node_id="from-options")
    runtime, queues = _worker(tmp_path, options, duroxide_tag_filter="default_and:gpu", duroxide_node_id="cli")
    assert queues == ["celery", "duroxide.activities", "duroxide.activities.gpu", "duroxide.orchestrator"]
    assert runtime.worker_id == "cli"


def test_runtime_options_alone_apply_and_no_filter_changes_nothing(tmp_path: Path) -> None:
    _, queues = _worker(tmp_path, RuntimeOptions(worker_tag_filter=TagFilter.NONE), queues=["duroxide.orchestrator"])
    assert queues == ["duroxide.orchestrator"]
    runtime, queues = _worker(tmp_path, queues=["duroxide.orchestrator"], duroxide_node_id="only-id")
    assert queues == ["duroxide.orchestrator"]  # no filter anywhere: -Q alone decides, as before
    assert runtime.worker_id == "only-id"


def test_the_command_line_changes_the_identity_object_the_runtime_handed_out(tmp_path: Path) -> None:
    app = Celery("wo-identity", broker="memory://", set_as_current=False)
    runtime = Runtime(SqliteProvider.open(str(tmp_path / "store.db")), app=app)
    identity = runtime.identity  # what the executors were given when the tasks were installed
    assert identity.stable is False and identity.tag_filter.untagged and identity.tag_filter.tags == frozenset()
    app.WorkController(
        queues=["duroxide.orchestrator"],
        pool_cls="solo",
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
        duroxide_node_id="gpu-7",
        duroxide_tag_filter="gpu",
    )
    assert runtime.identity is identity
    assert (identity.worker_id, identity.stable, identity.tag_filter.tags) == ("gpu-7", True, frozenset({"gpu"}))
    assert runtime.options.worker_node_id == "gpu-7" and runtime.options.worker_tag_filter == TagFilter.tags(["gpu"])


def test_a_bad_worker_override_changes_nothing(tmp_path: Path) -> None:
    runtime = Runtime(SqliteProvider.open(str(tmp_path / "store.db")), app=Celery("wo-bad", set_as_current=False))
    before = (runtime.options, runtime.identity.worker_id, runtime.identity.tag_filter)
    with pytest.raises(ValueError, match="may contain only"):
        runtime.configure_worker(worker_id="ok-id", tag_filter="bad tag")
    with pytest.raises(ValueError, match="may contain only"):
        runtime.configure_worker(worker_id="bad id", tag_filter="gpu")
    assert (runtime.options, runtime.identity.worker_id, runtime.identity.tag_filter) == before
