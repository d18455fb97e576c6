"""split_due (replay/timer_due.py): a turn processes the due messages and leaves TimerFired messages read before
their fire time in the inbox; every other message is due whatever it carries."""

from __future__ import annotations

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.timer_due import DueSplit, fire_at, split_due

NOW = 1_700_000_000_000


def timer(msg_id: int, at: object) -> tuple[int, dict[str, object]]:
    return msg_id, {"kind": ev.MSG_TIMER_FIRED, "execution_id": 1, "event_id": msg_id, "fire_at_ms": at}


def event(msg_id: int) -> tuple[int, dict[str, object]]:
    return msg_id, {"kind": ev.MSG_EXTERNAL_RAISED, "name": "go", "data": "null", "fire_at_ms": NOW + 10_000}


def test_nothing_is_early_when_every_timer_is_due():
    messages = [timer(1, NOW - 5), event(2), timer(3, NOW)]  # due exactly now counts as due
    split = split_due(messages, NOW)
    assert split == DueSplit(due=messages, early=[])
    assert split.next_due_ms is None


def test_a_timer_after_now_is_early_and_the_rest_keep_their_order():
    messages = [timer(1, NOW + 30), event(2), timer(3, NOW - 1), timer(4, NOW + 7)]
    split = split_due(messages, NOW)
    assert [m[0] for m in split.due] == [2, 3]
    assert [m[0] for m in split.early] == [1, 4]
    assert split.next_due_ms == NOW + 7


def test_every_message_early():
    split = split_due([timer(1, NOW + 1)], NOW)
    assert (split.due, [m[0] for m in split.early], split.next_due_ms) == ([], [1], NOW + 1)


def test_only_a_well_formed_timer_can_be_early():
    # Other kinds never wait (an event's payload may hold any key); a malformed timer goes to ingestion as before.
    odd = [timer(1, None), timer(2, str(NOW + 50)), timer(3, True), (4, {"kind": ev.MSG_TIMER_FIRED}), event(5)]
    split = split_due(odd, NOW)
    assert split.due == odd and split.early == []
    assert [fire_at(m[1]) for m in odd] == [None, None, None, None, None]
    assert fire_at(timer(6, NOW + 50)[1]) == NOW + 50


def test_no_messages():
    assert split_due([], NOW) == DueSplit(due=[], early=[])
