"""Error categories and poison handling (semantics.md 2.19, issue 4 item 7) on the embedded runtime."""

from __future__ import annotations

from duroxide_celery import RuntimeOptions

from .helpers import WAIT_MS, wait_until


def test_unregistered_activity_backs_off_then_fails_uncatchably(runtime_factory, client):
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("Missing", None)
        except Exception:  # noqa: BLE001 - configuration failures are not the code's to catch
            return "caught"

    runtime_factory({"UsesMissing": orch}, options=RuntimeOptions(max_attempts=2))
    client.start_orchestration("missing-act", "UsesMissing", None)
    result = client.wait_for_orchestration("missing-act", WAIT_MS)
    assert result.status == "Failed"
    assert "activity 'Missing' is not registered" in result.error


def test_explicit_child_id_already_taken_fails_the_call_instead_of_hanging(runtime_factory, client):
    def parent(ctx, _):
        try:
            return (yield ctx.schedule_sub_orchestration_with_id("Child", "taken-id", 1))
        except Exception as exc:  # noqa: BLE001
            return f"failed: {exc}"

    def child(ctx, x):
        yield ctx.wait_for_event("never")

    runtime_factory({"Parent": parent, "Child": child})
    client.start_orchestration("taken-id", "Child", 0)  # a running instance already holds the id
    client.start_orchestration("p-taken", "Parent", None)
    result = client.wait_for_orchestration("p-taken", WAIT_MS)
    assert result.output == "failed: sub-orchestration instance id 'taken-id' already exists"


def test_rolling_deploy_a_new_worker_with_the_handler_takes_over(runtime_factory, client, provider):
    old = runtime_factory({})  # the old worker does not know the orchestration yet
    client.start_orchestration("rolling-1", "NewWorkflow", 21)
    wait_until(
        lambda: (client._store.get_instance("rolling-1") or {}).get("next_attempt_at", 0) > 0,
        what="the old worker to back off",
    )
    old.shutdown()
    runtime_factory({"NewWorkflow": lambda ctx, x: (yield ctx.schedule_timer(1)) or x * 2})
    result = client.wait_for_orchestration("rolling-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", 42)
