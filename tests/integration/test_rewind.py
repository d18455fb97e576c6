"""Rewind, restart and start(if_exists=...) (issue 16 part 3), on the embedded runtime over SQLite or PostgreSQL
(DUROXIDE_TEST_DB)."""

from __future__ import annotations

import json
import threading

import pytest

from duroxide_celery import (
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    RewindRefused,
    RuntimeOptions,
)
from duroxide_celery.registry import Registry

from .helpers import WAIT_MS, kinds, wait_for_kind

#: "The code now deployed": the activity and orchestration below fail until a test sets these.
FIXED = {"activity": False, "orchestration": False}
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _unfixed():
    FIXED.update(activity=False, orchestration=False)
    CALLS.clear()


def flaky(ctx, x):
    CALLS.append(f"flaky:{x}")
    if not FIXED["activity"]:
        raise ValueError(f"flaky broke on {x}")
    return x * 10


def double(ctx, x):
    return x * 2


def two_steps(ctx, x):
    a = yield ctx.schedule_activity("Double", x)
    ctx.set_custom_status(f"a={a}")
    b = yield ctx.schedule_activity("Flaky", a)
    return [a, b]


def parent(ctx, x):
    got = yield ctx.schedule_sub_orchestration("TwoSteps", x)
    return {"child": got}


def waits_then_raises(ctx, _):
    got = yield ctx.wait_for_event("go")
    if not FIXED["orchestration"]:
        raise RuntimeError("bug in the orchestration")
    return got + 1


def exits_on_event(ctx, _):
    got = yield ctx.wait_for_event("go")
    if not FIXED["orchestration"]:
        raise SystemExit("deploy me")  # a BaseException: the turn fails without recording what it consumed
    return got


def reordered(ctx, x):  # a "fix" that changes the steps already in history: not replayable
    b = yield ctx.schedule_activity("Flaky", x)
    return [b]


ORCHESTRATIONS = {
    "TwoSteps": two_steps,
    "Parent": parent,
    "WaitsThenRaises": waits_then_raises,
    "ExitsOnEvent": exits_on_event,
}
ACTIVITIES = {"Flaky": flaky, "Double": double}


def _events(client, instance_id, kind):
    return [e for e in client.read_execution_history(instance_id, 1) if e.kind == kind]


def test_rewind_after_a_fix_reruns_the_failed_activity_and_completes_with_one_audit_record(runtime_factory, client):
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.start_orchestration("rw-1", "TwoSteps", 2)
    failed = client.wait_for_orchestration("rw-1", WAIT_MS)
    assert failed.status == "Failed" and "flaky broke on 4" in failed.error
    rt.shutdown(timeout_ms=2000)

    # Deploy the fix: a new runtime on the same store, the same activity name now working.
    FIXED["activity"] = True
    fixed = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.rewind("rw-1", "deployed the Flaky fix", registry=fixed)
    done = client.wait_for_orchestration("rw-1", WAIT_MS)
    assert (done.status, done.output, done.error) == ("Completed", [4, 40], None)
    assert done.custom_status == "a=4"
    assert CALLS == ["flaky:4", "flaky:4"]  # Double did not run again; Flaky ran once more

    (audit,) = _events(client, "rw-1", "OrchestrationRewound")
    data = json.loads(audit.data)
    assert data["reason"] == "deployed the Flaky fix"
    assert data["error"].startswith("Activity 'Flaky' call failed: ValueError: flaky broke on 4")
    # The audit trail: the failure and the old terminal are still there, and they are what was rewound.
    (failure,) = _events(client, "rw-1", "ActivityFailed")
    (old_terminal,) = _events(client, "rw-1", "OrchestrationFailed")
    assert data["rewound_event_ids"] == [failure.event_id, old_terminal.event_id]
    (flaky_scheduled,) = [e for e in _events(client, "rw-1", "ActivityScheduled") if "Flaky" in e.data]
    (rerun,) = _events(client, "rw-1", "ActivityCompleted")[-1:]
    assert rerun.source_event_id == flaky_scheduled.event_id == failure.source_event_id
    assert kinds(client, "rw-1")[-1] == "OrchestrationCompleted"
    assert client.get_execution_info("rw-1", 1).status == "Completed"


def test_rewind_of_a_child_failure_rewinds_the_child_with_its_parent(runtime_factory, client):
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.start_orchestration("rw-parent", "Parent", 3)
    assert client.wait_for_orchestration("rw-parent", WAIT_MS).status == "Failed"
    child_id = client.get_instance_tree("rw-parent").all_ids[1]
    assert client.get_status(child_id).status == "Failed"

    FIXED["activity"] = True
    assert client.rewind("rw-parent", "child fixed", registry=rt) == ["rw-parent", child_id]
    done = client.wait_for_orchestration("rw-parent", WAIT_MS)
    assert (done.status, done.output) == ("Completed", {"child": [6, 60]})
    assert client.get_status(child_id).status == "Completed"
    assert kinds(client, child_id).count("OrchestrationRewound") == 1
    assert kinds(client, "rw-parent").count("OrchestrationRewound") == 1
    # The child's rerun reported to the parent's same scheduled event.
    (scheduled,) = _events(client, "rw-parent", "SubOrchestrationScheduled")
    (completed,) = _events(client, "rw-parent", "SubOrchestrationCompleted")
    assert completed.source_event_id == scheduled.event_id


def test_rewind_of_the_orchestrations_own_exception_reruns_its_last_turn(runtime_factory, client):
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.start_orchestration("rw-own", "WaitsThenRaises")
    wait_for_kind(client, "rw-own", "ExternalSubscribed")
    client.raise_event("rw-own", "go", 41)
    assert "bug in the orchestration" in client.wait_for_orchestration("rw-own", WAIT_MS).error

    # Still broken: the check replays the last turn, which fails again, so nothing is written.
    with pytest.raises(RewindRefused, match="fails again before any step runs: RuntimeError: bug"):
        client.rewind("rw-own", "too early", registry=rt)
    assert "OrchestrationRewound" not in kinds(client, "rw-own")

    FIXED["orchestration"] = True
    client.rewind("rw-own", "fixed the orchestration", registry=rt)
    done = client.wait_for_orchestration("rw-own", WAIT_MS)
    assert (done.status, done.output) == ("Completed", 42)  # the event its failing turn consumed replays


def test_refusals_name_the_reason_and_write_nothing(runtime_factory, client):
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    with pytest.raises(InstanceNotFound, match="nope"):
        client.rewind("nope", "x")
    client.start_orchestration("rw-running", "WaitsThenRaises")
    wait_for_kind(client, "rw-running", "ExternalSubscribed")
    with pytest.raises(RewindRefused, match="it is Running; only a Failed instance can be rewound"):
        client.rewind("rw-running", "x")
    FIXED["activity"] = True
    client.start_orchestration("rw-done", "TwoSteps", 1)
    assert client.wait_for_orchestration("rw-done", WAIT_MS).status == "Completed"
    with pytest.raises(RewindRefused, match="it is Completed"):
        client.rewind("rw-done", "x")
    client.cancel_instance("rw-running", "stop")
    assert client.wait_for_orchestration("rw-running", WAIT_MS).status == "Failed"
    with pytest.raises(RewindRefused, match=r"it was canceled \(canceled: stop\); restart it instead"):
        client.rewind("rw-running", "x")
    with pytest.raises(TypeError, match="rewind reason must be a str"):
        client.rewind("rw-running", None)
    assert "OrchestrationRewound" not in kinds(client, "rw-running") + kinds(client, "rw-done")
    rt.shutdown(timeout_ms=2000)


def test_nondeterministic_rewind_is_refused_with_the_mismatch(runtime_factory, client):
    runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.start_orchestration("rw-nd", "TwoSteps", 5)
    assert client.wait_for_orchestration("rw-nd", WAIT_MS).status == "Failed"
    changed = Registry()
    changed.register_orchestration("TwoSteps", reordered)
    before = kinds(client, "rw-nd")
    with pytest.raises(RewindRefused, match=r"no longer replays .*nondeterministic: schedule mismatch: "):
        client.rewind("rw-nd", "x", registry=changed)
    assert kinds(client, "rw-nd") == before and client.get_status("rw-nd").status == "Failed"
    other = Registry()
    with pytest.raises(RewindRefused, match="'TwoSteps' version 1.0.0 is not in the registry"):
        client.rewind("rw-nd", "x", registry=other)


def test_without_a_registry_the_next_turn_detects_nondeterminism(runtime_factory, client, provider):
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.start_orchestration("rw-nd2", "TwoSteps", 5)
    assert client.wait_for_orchestration("rw-nd2", WAIT_MS).status == "Failed"
    rt.shutdown(timeout_ms=2000)
    runtime_factory({"TwoSteps": reordered}, ACTIVITIES)
    client.rewind("rw-nd2", "unchecked")
    wait_for_kind(client, "rw-nd2", "OrchestrationRewound")
    result = client.wait_for_orchestration("rw-nd2", WAIT_MS)
    assert result.status == "Failed"
    assert result.error.startswith("nondeterministic: schedule mismatch: action=ActivityScheduled{name: 'Flaky'")
    assert kinds(client, "rw-nd2").count("OrchestrationFailed") == 2


# -- restart ------------------------------------------------------------------------------------------------------
def test_restart_creates_a_linked_instance_with_the_same_input_and_version(runtime_factory, client):
    FIXED["activity"] = True
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    rt.register_orchestration_versioned("TwoSteps", "2.0.0", lambda ctx, x: ["v2", x])
    client.start_orchestration_versioned("rs-1", "TwoSteps", 7, "1.0.0")
    assert client.wait_for_orchestration("rs-1", WAIT_MS).output == [14, 140]

    first = client.restart("rs-1")
    assert first == "rs-1:restart-1"
    info = client.get_instance_info(first)
    assert (info.restarted_from, info.orchestration_name) == ("rs-1", "TwoSteps")
    assert client.wait_for_orchestration(first, WAIT_MS).output == [14, 140]
    assert client.get_instance_info(first).orchestration_version == "1.0.0"
    assert client.get_instance_info("rs-1").restarted_from is None

    assert client.restart("rs-1") == "rs-1:restart-2"
    assert client.restart("rs-1", "rs-1-v2", version="2.0.0") == "rs-1-v2"
    assert client.wait_for_orchestration("rs-1-v2", WAIT_MS).output == ["v2", 7]
    with pytest.raises(InstanceAlreadyExists, match="rs-1-v2"):
        client.restart("rs-1", "rs-1-v2")
    with pytest.raises(InstanceNotFound):
        client.restart("no-such")
    client.start_orchestration("rs-running", "WaitsThenRaises")
    with pytest.raises(InstanceStillRunning, match="rs-running is Running"):
        client.restart("rs-running")
    with pytest.raises(ValueError, match="pass new_instance_id"):
        client.restart("x" * 510)


# -- start_orchestration(if_exists=...) ------------------------------------------------------------------------
def test_if_exists_keep_fail_and_restart_if_finished(runtime_factory, client):
    FIXED["activity"] = True
    runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    created = client.start_orchestration("ie-1", "TwoSteps", 1)
    assert (created.outcome, created.execution_id, bool(created)) == ("created", 1, True)
    assert client.wait_for_orchestration("ie-1", WAIT_MS).output == [2, 20]

    kept = client.start_orchestration("ie-1", "TwoSteps", 2)  # the default: the first start wins
    assert (kept.outcome, kept.execution_id, bool(kept)) == ("kept", 1, False)
    with pytest.raises(InstanceAlreadyExists, match="Instance ie-1 already exists"):
        client.start_orchestration("ie-1", "TwoSteps", 2, if_exists="fail")
    assert client.list_executions("ie-1") == [1]

    again = client.start_orchestration("ie-1", "TwoSteps", 3, if_exists="restart_if_finished")
    assert (again.outcome, again.execution_id, bool(again)) == ("restarted", 2, True)
    done = client.wait_for_orchestration("ie-1", WAIT_MS)
    assert (done.status, done.output) == ("Completed", [6, 60])
    assert client.list_executions("ie-1") == [1, 2]
    assert kinds(client, "ie-1", 1)[-1] == "OrchestrationCompleted"  # the first run's history is kept

    client.start_orchestration("ie-2", "WaitsThenRaises")
    running = client.start_orchestration("ie-2", "WaitsThenRaises", if_exists="restart_if_finished")
    assert running.outcome == "kept"
    with pytest.raises(ValueError, match="if_exists must be one of 'keep', 'fail', 'restart_if_finished'"):
        client.start_orchestration("ie-3", "TwoSteps", if_exists="replace")
    assert client.get_status("ie-3").status == "NotFound"


def raced(ctx, x):
    won = yield ctx.race(ctx.schedule_activity("Flaky", x), ctx.schedule_timer(3_600_000))
    return won["value"]


def test_rewind_recreates_the_work_the_failure_cancelled_and_a_late_parent_rewind_reuses_the_child(
    runtime_factory, client
):
    rt = runtime_factory({**ORCHESTRATIONS, "Raced": raced}, ACTIVITIES)
    client.start_orchestration("rw-race", "Raced", 1)
    client.start_orchestration("rw-p2", "Parent", 2)
    for instance_id in ("rw-race", "rw-p2"):
        assert client.wait_for_orchestration(instance_id, WAIT_MS).status == "Failed"
    rt.shutdown(timeout_ms=2000)
    assert client.get_queue_depths().timer_queue == 0  # the failure's race cancelled the timer

    # Nothing runs now: what the rewind wrote is all there is to see.
    client.rewind("rw-race", "x")
    depths = client.get_queue_depths()
    assert (depths.worker_queue, depths.timer_queue) == (1, 1)  # the failed activity again, and the race's timer
    waits = client.get_waits("rw-race")
    assert [(a.name, a.state) for a in waits.activities] == [("Flaky", "queued")]
    assert len(waits.timers) == 1

    # The child alone first: it completes and reports to its parent, which has failed and ignores the report.
    FIXED["activity"] = True
    runtime_factory({**ORCHESTRATIONS, "Raced": raced}, ACTIVITIES)
    child_id = client.get_instance_tree("rw-p2").all_ids[1]
    client.rewind(child_id, "child first")
    assert client.wait_for_orchestration(child_id, WAIT_MS).output == [4, 40]
    assert client.wait_for_orchestration("rw-race", WAIT_MS).output == 10
    assert client.get_queue_depths().timer_queue == 0  # the race's winner cancelled the timer again
    assert client.get_status("rw-p2").status == "Failed"
    # Then the parent: its child is Completed now, so its result is delivered again.
    client.rewind("rw-p2", "parent too")
    assert client.wait_for_orchestration("rw-p2", WAIT_MS).output == {"child": [4, 40]}
    assert kinds(client, child_id).count("OrchestrationRewound") == 1


def adopts(ctx, _):
    return (yield ctx.schedule_sub_orchestration_with_id("TwoSteps", "rw-taken", 1))


def test_a_child_id_that_belonged_to_another_instance_is_not_rewound(runtime_factory, client):
    FIXED["activity"] = True
    runtime_factory({**ORCHESTRATIONS, "Adopts": adopts}, ACTIVITIES)
    client.start_orchestration("rw-taken", "TwoSteps", 1)
    assert client.wait_for_orchestration("rw-taken", WAIT_MS).status == "Completed"
    client.start_orchestration("rw-adopts", "Adopts")
    failed = client.wait_for_orchestration("rw-adopts", WAIT_MS)
    assert "sub-orchestration instance id 'rw-taken' already exists" in failed.error
    with pytest.raises(RewindRefused, match="sub-orchestration id rw-taken belongs to another instance"):
        client.rewind("rw-adopts", "x")
    assert client.get_status("rw-adopts").status == "Failed"


def test_a_poisoned_instance_whose_orchestration_is_now_deployed_is_rewound(runtime_factory, client):
    rt = runtime_factory({}, ACTIVITIES, options=RuntimeOptions(max_attempts=1))
    client.start_orchestration("rw-poison", "TwoSteps", 1)
    failed = client.wait_for_orchestration("rw-poison", WAIT_MS)
    assert failed.error.startswith("poison: orchestration rw-poison exceeded")
    rt.shutdown(timeout_ms=2000)
    FIXED["activity"] = True
    deployed = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.rewind("rw-poison", "deployed TwoSteps", registry=deployed)
    assert client.wait_for_orchestration("rw-poison", WAIT_MS).output == [2, 20]


def test_rewind_argument_errors(client):
    with pytest.raises(TypeError, match="registry must be a Registry or Runtime, got dict"):
        client.rewind("any", "x", registry={})
    with pytest.raises(TypeError, match="instance id must be a str"):
        client.rewind(7, "x")


def test_concurrent_rewinds_of_one_instance_commit_once(runtime_factory, client):
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.start_orchestration("rw-twice", "TwoSteps", 1)
    assert client.wait_for_orchestration("rw-twice", WAIT_MS).status == "Failed"
    rt.shutdown(timeout_ms=2000)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def rewind() -> None:
        barrier.wait()
        try:
            client.rewind("rw-twice", "race")
            outcomes.append("rewound")
        except RewindRefused as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=rewind) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 4 and outcomes.count("rewound") == 1, outcomes
    assert all("it is Running" in o or "changed while being rewound" in o for o in outcomes if o != "rewound")
    assert kinds(client, "rw-twice").count("OrchestrationRewound") == 1
    assert client.get_queue_depths().worker_queue == 1


def test_the_event_a_failed_turn_consumed_unrecorded_is_delivered_again(runtime_factory, client):
    rt = runtime_factory(ORCHESTRATIONS, ACTIVITIES)
    client.start_orchestration("rw-exit", "ExitsOnEvent")
    wait_for_kind(client, "rw-exit", "ExternalSubscribed")
    client.raise_event("rw-exit", "go", {"order": 9})
    failed = client.wait_for_orchestration("rw-exit", WAIT_MS)
    assert failed.error.startswith("SystemExit: deploy me")
    assert "ExternalEvent" not in kinds(client, "rw-exit")  # consumed, recorded only on the failure
    # The hot instance's engine had appended the event in memory: the stored ids stay dense all the same.
    ids = [e.event_id for e in client.read_execution_history("rw-exit", 1)]
    assert ids == [1, 2, 3], ids
    FIXED["orchestration"] = True
    client.rewind("rw-exit", "fixed", registry=rt)
    assert client.wait_for_orchestration("rw-exit", WAIT_MS).output == {"order": 9}


def waits_for_go(ctx, _):
    return (yield ctx.wait_for_event("go"))


def both_children(ctx, _):
    results = yield ctx.all(
        [
            ctx.schedule_sub_orchestration_with_id("Undeployed", "rw-kids-a", 1),
            ctx.schedule_sub_orchestration_with_id("WaitsForGo", "rw-kids-b", None),
        ]
    )
    return results


def test_a_child_the_failed_parent_canceled_is_rewound_with_it(runtime_factory, client):
    orchestrations = {"BothChildren": both_children, "WaitsForGo": waits_for_go}
    rt = runtime_factory(orchestrations, ACTIVITIES, options=RuntimeOptions(max_attempts=1))
    client.start_orchestration("rw-kids", "BothChildren")
    failed = client.wait_for_orchestration("rw-kids", WAIT_MS)
    assert failed.error.startswith("poison: orchestration rw-kids-a exceeded")  # not catchable: it aborts the parent
    b = client.wait_for_orchestration("rw-kids-b", WAIT_MS)
    assert b.error == "canceled: parent dropped sub-orchestration future"
    with pytest.raises(RewindRefused, match="it was canceled"):
        client.rewind("rw-kids-b", "alone")  # a cancel is undone only with the parent that sent it
    rt.shutdown(timeout_ms=2000)

    deployed = runtime_factory({**orchestrations, "Undeployed": lambda ctx, x: x + 1}, ACTIVITIES)
    assert client.rewind("rw-kids", "deployed Undeployed", registry=deployed) == ["rw-kids", "rw-kids-a", "rw-kids-b"]
    assert client.get_status("rw-kids-b").status == "Running"
    wait_for_kind(client, "rw-kids-b", "ExternalSubscribed")
    client.raise_event("rw-kids-b", "go", "b")
    done = client.wait_for_orchestration("rw-kids", WAIT_MS)
    assert (done.status, done.output) == ("Completed", [{"ok": 2}, {"ok": "b"}])


def flaky_or_stop(ctx, x):
    won = yield ctx.race(ctx.schedule_activity("Flaky", x), ctx.wait_for_event("stop"))
    return won["value"]


def test_get_waits_sees_the_rewound_history(runtime_factory, client):
    rt = runtime_factory({"FlakyOrStop": flaky_or_stop}, ACTIVITIES)
    client.start_orchestration("rw-waits", "FlakyOrStop", 1)
    assert client.wait_for_orchestration("rw-waits", WAIT_MS).status == "Failed"
    rt.shutdown(timeout_ms=2000)
    client.rewind("rw-waits", "x")
    # The race the failure decided is open again: the activity runs again and the event is awaited again.
    waits = client.get_waits("rw-waits")
    assert [a.name for a in waits.activities] == ["Flaky"]
    assert [e.name for e in waits.events] == ["stop"]
