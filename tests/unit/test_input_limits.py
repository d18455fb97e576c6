"""Issue 11 items 5, 6, 12 and 13 (engine and context half): every context input the store or the broker could not
carry is refused at the call, as an error the orchestration can catch; JSON payloads refuse non-str keys and deep
nesting; the custom status limit cannot be swallowed by a bare `except:`."""

from __future__ import annotations

import math

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import StartOrchestration, TurnInput
from duroxide_celery.replay.engine import run_turn
from duroxide_celery.replay.events import MAX_JSON_DEPTH, dumps
from duroxide_celery.replay.limits import MAX_DELAY_MS

from .sim import NOW_MS, Sim, assert_replay_stable, error_message, outgoing_of, output_of


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _catching(action):
    """An orchestration that runs `action(ctx)` (yielding what it returns) and returns the error it caught."""

    def orch(ctx, _):
        try:
            task = action(ctx)
            if task is not None:
                yield task
        except (TypeError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "accepted"

    return orch


def _refused(action, instance_id: str = "inst") -> tuple[str, Sim]:
    sim = Sim({"o": _catching(action)}, instance_id=instance_id).start("o")
    r = sim.turn()
    assert r.status == "Completed", error_message(r) if r.status == "Failed" else r.status
    return output_of(r), sim


# -- item 12: JSON key collisions ---------------------------------------------------------------------------------
def test_dumps_refuses_non_str_keys_naming_their_type():
    with pytest.raises(TypeError, match="dict key 1 is of type int; JSON object keys must be str"):
        dumps({1: "a", "1": "b", None: "c", "null": "d"})
    with pytest.raises(TypeError, match="dict key None is of type NoneType"):
        dumps({"outer": [{None: 1}]})
    with pytest.raises(TypeError, match="dict key True is of type bool"):
        dumps([{"ok": {True: 1}}])
    assert dumps({"1": "b", "null": "d"}) == '{"1":"b","null":"d"}'


def test_colliding_keys_in_activity_input_are_a_catchable_error():
    message, sim = _refused(lambda ctx: ctx.schedule_activity("A", {1: "a", "1": "b"}))
    assert message.startswith("TypeError: input of activity 'A': value is not JSON-serializable: dict key 1 is of")
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_COMPLETED]


def test_non_str_keys_in_output_fail_the_orchestration_with_the_reason():
    r = Sim({"o": lambda ctx, _: {None: "c", "null": "d"}}).start("o").turn()
    assert r.status == "Failed"
    assert "orchestration output value is not JSON-serializable: dict key None is of type NoneType" in error_message(r)


def test_non_str_keys_in_continue_as_new_and_child_inputs_are_refused():
    message, _ = _refused(lambda ctx: ctx.continue_as_new({2: "x"}))
    assert message.startswith("TypeError: continue_as_new input: value is not JSON-serializable: dict key 2")
    message, _ = _refused(lambda ctx: ctx.schedule_sub_orchestration("C", {(1, 2): "x"}))
    assert "keys must be str, int, float, bool or None, not tuple" in message  # the stdlib's own check


# -- item 13: nesting depth -----------------------------------------------------------------------------------------
def test_json_depth_limit_is_exact_and_deep_values_get_a_clear_error():
    assert dumps(_nested(MAX_JSON_DEPTH)).count("[") == MAX_JSON_DEPTH
    with pytest.raises(TypeError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        dumps(_nested(MAX_JSON_DEPTH + 1))
    # So deep that the encoder itself would hit Python's recursion limit: the same clear TypeError.
    with pytest.raises(TypeError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        dumps(_nested(100_000))
    deep_dict: dict = {}
    for _ in range(MAX_JSON_DEPTH):
        deep_dict = {"k": deep_dict}
    with pytest.raises(TypeError, match="nested deeper"):
        dumps(deep_dict)


def test_deep_activity_input_is_a_catchable_error():
    message, sim = _refused(lambda ctx: ctx.schedule_activity("A", _nested(MAX_JSON_DEPTH + 1)))
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message
    assert sim.scheduled() == []


# -- item 13: the custom status limit cannot be swallowed -----------------------------------------------------------
BIG_STATUS = "x" * (256 * 1024 + 1)
LIMIT_MESSAGE = "custom status is 262145 bytes; the limit is 262144 bytes"


def test_bare_except_cannot_swallow_the_custom_status_limit_then_yield():
    def orch(ctx, _):
        try:
            ctx.set_custom_status(BIG_STATUS)
        except:  # noqa: E722 - the point of the test
            pass
        yield ctx.schedule_activity("After", None)
        return "swallowed"

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.status == "Failed" and r.error["message"] == LIMIT_MESSAGE
    assert r.error["kind"] == "CustomStatusLimit"
    assert sim.scheduled() == [] and r.custom_status_changed is False


def test_bare_except_cannot_swallow_the_custom_status_limit_then_return():
    def gen_orch(ctx, _):
        yield ctx.schedule_timer(10)
        try:
            ctx.set_custom_status(BIG_STATUS)
        except BaseException:  # noqa: BLE001 - the point of the test
            return "swallowed"

    def plain_orch(ctx, _):
        try:
            ctx.set_custom_status(BIG_STATUS)
        except:  # noqa: E722
            return "swallowed"

    def raises_other(ctx, _):
        try:
            ctx.set_custom_status(BIG_STATUS)
        except:  # noqa: E722
            raise RuntimeError("something else") from None

    sim = Sim({"o": gen_orch}).start("o")
    sim.turn()
    r = sim.fire(sim.timers()[0]).turn()
    assert r.status == "Failed" and r.error["message"] == LIMIT_MESSAGE
    assert_replay_stable(sim)
    for orch in (plain_orch, raises_other):
        r = Sim({"o": orch}).start("o").turn()
        assert r.status == "Failed" and r.error["message"] == LIMIT_MESSAGE


# -- item 6: context inputs the schema cannot store ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (lambda ctx: ctx.schedule_activity("a" * 257), "activity name is 257 characters; the limit is 256"),
        (lambda ctx: ctx.schedule_activity("a\x00b"), "activity name must not contain NUL characters"),
        (lambda ctx: ctx.schedule_activity("A", 1, session_id="s\x00"), "session_id must not contain NUL"),
        (lambda ctx: ctx.schedule_activity("A", 1, session_id="s" * 257), "session_id is 257 characters"),
        (lambda ctx: ctx.schedule_activity("A", 1, ttl_ms=MAX_DELAY_MS + 1), "activity ttl_ms is"),
        (lambda ctx: ctx.schedule_activity("A\ud800"), "activity name must be valid Unicode text"),
        (lambda ctx: ctx.schedule_sub_orchestration("o" * 257), "orchestration name is 257 characters"),
        (
            lambda ctx: ctx.schedule_sub_orchestration_with_id("C", "c" * 513),
            "sub-orchestration instance id is 513 characters; the limit is 512",
        ),
        (lambda ctx: ctx.schedule_sub_orchestration_with_id("C", "c\x00"), "instance id must not contain NUL"),
        (lambda ctx: ctx.schedule_sub_orchestration_versioned("C", "v" * 65), "version is 65 characters"),
        (lambda ctx: ctx.schedule_sub_orchestration_versioned("C", "1\x00"), "version must not contain NUL"),
        (lambda ctx: ctx.start_orchestration("C", "d" * 513), "instance id is 513 characters; the limit is 512"),
        (lambda ctx: ctx.start_orchestration("C\x00", "d"), "orchestration name must not contain NUL"),
        (lambda ctx: ctx.start_orchestration_versioned("C", "v" * 65, "d"), "version is 65 characters"),
        (lambda ctx: ctx.start_orchestration_typed("C", "d", '"a\x00"'), "orchestration input must not contain NUL"),
        (lambda ctx: ctx.schedule_activity_typed("A", '"a\x00"'), "input of activity 'A' must not contain NUL"),
        (lambda ctx: ctx.continue_as_new_versioned(1, "v" * 65), "version is 65 characters"),
        (lambda ctx: ctx.wait_for_event("e\x00"), "event name must not contain NUL"),
        (lambda ctx: ctx.dequeue_event("q\x00"), "queue name must not contain NUL"),
        (lambda ctx: ctx.try_dequeue_event("q\x00"), "queue name must not contain NUL"),
        (lambda ctx: ctx.set_kv_value("k" * 513, "v"), "KV key is 513 characters; the limit is 512"),
        (lambda ctx: ctx.set_kv_value("k\x00", "v"), "KV key must not contain NUL"),
        (lambda ctx: ctx.set_kv_value("k", "v\x00"), "KV value for key 'k' must not contain NUL"),
        (lambda ctx: ctx.clear_kv_value("k\x00"), "KV key must not contain NUL"),
        (lambda ctx: ctx.get_kv_value_from_instance("i\x00", "k"), "instance id must not contain NUL"),
        (lambda ctx: ctx.get_kv_value_from_instance("i", 5), "takes a str instance id and a str key"),
        (lambda ctx: ctx.set_custom_status("s\x00"), "custom status must not contain NUL"),
        (lambda ctx: ctx.schedule_timer(1e300), "timer delay is"),
        (lambda ctx: ctx.schedule_timer(MAX_DELAY_MS + 1), f"the limit is {MAX_DELAY_MS} ms"),
        (lambda ctx: ctx.schedule_timer(math.nan), "timer delay must be a finite number of milliseconds"),
        (lambda ctx: ctx.schedule_timer(math.inf), "timer delay must be a finite number of milliseconds"),
        (lambda ctx: ctx.schedule_timer(-1), "timer delay must be at least 0 ms"),
        (lambda ctx: ctx.schedule_timer(1.5), "timer delay must be a whole number of milliseconds"),
        (lambda ctx: ctx.schedule_timer("10"), "timer delay must be a number of milliseconds"),
        (lambda ctx: ctx.schedule_timer(True), "timer delay must be a number of milliseconds"),
        (
            lambda ctx: ctx.schedule_activity_with_retry("A", 1, {"timeout_ms": 1e300}),
            "retry policy timeout_ms is",
        ),
        (
            lambda ctx: ctx.schedule_activity_with_retry("A", 1, {"total_timeout_ms": math.inf}),
            "retry policy total_timeout_ms must be a finite number",
        ),
        (
            lambda ctx: ctx.schedule_activity_with_retry("A", 1, {"backoff": {"kind": "fixed", "delay_ms": -5}}),
            "retry policy backoff delay_ms must be at least 0 ms",
        ),
    ],
)
def test_context_input_the_store_cannot_hold_is_a_catchable_error(action, expected):
    message, sim = _refused(action)
    assert expected in message, message
    # Nothing of the refused call reached history: the orchestration went on and completed.
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_COMPLETED]


def test_values_at_the_limits_are_accepted():
    def orch(ctx, _):
        ctx.set_kv_value("k" * 512, "v")
        ctx.set_custom_status("status with \u00e9")
        yield ctx.schedule_activity("a" * 256, {"text": "nul \x00 inside JSON is fine"}, session_id="s" * 256)
        yield ctx.schedule_timer(float(MAX_DELAY_MS))
        yield ctx.start_orchestration_versioned("C", "v" * 64, "d" * 512)
        return "ok"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    assert sim.event(sim.scheduled()[0]).data["input"] == '{"text":"nul \\u0000 inside JSON is fine"}'
    sim.complete(sim.scheduled()[0])
    sim.turn()
    assert sim.event(sim.timers()[0]).data["fire_at_ms"] == NOW_MS + 1000 + MAX_DELAY_MS
    r = sim.fire(sim.timers()[0]).turn()
    assert output_of(r) == "ok"
    assert_replay_stable(sim)


# -- item 6: the generated id of a long parent's child ------------------------------------------------------------
def _child_ids(instance_id: str, execution_id: int = 1) -> list[str]:
    def parent(ctx, _):
        yield ctx.all([ctx.schedule_sub_orchestration("C", 1), ctx.schedule_sub_orchestration("C", 2)])

    sim = Sim({"p": parent}, instance_id=instance_id, execution_id=execution_id).start("p")
    r = sim.turn()
    assert r.status == "Running"
    assert_replay_stable(sim)
    return [s.instance_id for s in outgoing_of(r, StartOrchestration)]


def test_generated_child_ids_of_a_512_character_parent_fit_and_are_deterministic():
    parent = "p" * 512
    ids = _child_ids(parent)
    assert len(ids) == 2 and len(set(ids)) == 2
    for child in ids:
        assert len(child) <= 512 and "::sub::" in child and child.startswith("p" * 100)
    assert ids[0].endswith("::sub::2") and ids[1].endswith("::sub::3")
    assert _child_ids(parent) == ids  # deterministic across runs
    # Two long parents that differ only at the end get different children.
    other = _child_ids("p" * 511 + "q")
    assert set(other).isdisjoint(ids)
    # A later execution's children, too.
    later = _child_ids(parent, execution_id=7)
    assert all(len(c) <= 512 and c.endswith(f"::sub::7_{n}") for c, n in zip(later, (2, 3), strict=True))
    # Short parents keep duroxide's form.
    assert _child_ids("short") == ["short::sub::2", "short::sub::3"]
    assert _child_ids("x" * 504) == ["x" * 504 + "::sub::2", "x" * 504 + "::sub::3"]  # exactly 512
    assert all(len(c) == 512 and "~" in c for c in _child_ids("x" * 505))


# -- item 5: tags the broker cannot carry -------------------------------------------------------------------------
def _tag_turn(tag: str, activity_queue: str | None):
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("A", 1).with_tag(tag)
        except ValueError as exc:
            return str(exc)
        return "scheduled"

    inp = TurnInput(
        instance_id="inst",
        execution_id=1,
        history=[],
        messages=[{"kind": ev.MSG_START, "name": "o", "input": "null"}],
        now_ms=NOW_MS,
        new_guid=lambda: "g",
        activity_queue=activity_queue,
    )
    return run_turn(inp, lambda name, version: ("1.0.0", orch))


def test_tag_whose_queue_name_exceeds_255_bytes_is_a_catchable_error():
    # The turn names its queue: `duroxide.activities.<tag>` holds a tag of 255 - 20 = 235 bytes.
    assert _tag_turn("t" * 235, "duroxide.activities").status == "Running"
    r = _tag_turn("t" * 236, "duroxide.activities")
    assert r.status == "Completed"
    assert output_of(r) == (
        f"activity tag {'t' * 40!r}... is too long for its broker queue: 'duroxide.activities.<tag>' would be "
        "256 bytes; the limit is 255 bytes, so a tag may have at most 235 bytes here"
    )
    assert [e.kind for e in r.new_events] == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_COMPLETED]
    # A longer prefix leaves less room.
    assert "at most 155 bytes" in output_of(_tag_turn("t" * 200, "p" * 88 + ".activities"))
    # Without a queue name, the longest default (the embedded runtime's) is assumed: 222 bytes.
    assert _tag_turn("t" * 222, None).status == "Running"
    assert "at most 222 bytes" in output_of(_tag_turn("t" * 223, None))


def test_a_bad_member_of_all_records_nothing_of_the_others():
    def orch(ctx, _):
        try:
            yield ctx.all([ctx.schedule_activity("Ok", 1), ctx.schedule_activity("A", 1).with_tag("t" * 250)])
        except ValueError as exc:
            return str(exc)

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert "too long for its broker queue" in output_of(r)
    assert sim.scheduled() == []


def test_tag_with_a_trailing_newline_is_refused():
    message, _ = _refused(lambda ctx: ctx.schedule_activity("A", 1).with_tag("gpu\n"))
    assert message == "ValueError: activity tag 'gpu\\n' may contain only letters, digits and _ . : -"
