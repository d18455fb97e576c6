"""Session queues of generated worker ids carry a queue TTL (x-expires), told from the queue name alone, so every
process that declares one (its worker, any publisher) declares it alike; chosen ids keep theirs without one."""

from __future__ import annotations

import pytest

from duroxide_celery.options import check_worker_id
from duroxide_celery.tasks.identity import WorkerIdentity
from duroxide_celery.tasks.queues import (
    GENERATED_ID_MARK,
    GENERATED_SESSION_QUEUE_EXPIRES_S,
    QueueNames,
    queue,
)


def test_a_generated_worker_ids_session_queue_expires_when_unused() -> None:
    generated = WorkerIdentity.create(None, None)
    assert not generated.stable and generated.worker_id.startswith(GENERATED_ID_MARK)
    declared = queue(QueueNames("shop").session_queue(generated.worker_id))
    assert declared.queue_arguments == {"x-expires": GENERATED_SESSION_QUEUE_EXPIRES_S * 1000}
    assert (declared.durable, declared.auto_delete) == (True, False)


def test_chosen_ids_and_the_other_engine_queues_have_no_ttl() -> None:
    names = QueueNames("shop")
    chosen = WorkerIdentity.create("gpu-1@host", None)
    assert chosen.stable
    for name in (names.session_queue(chosen.worker_id), names.orchestrator, names.activity_queue("gpu")):
        assert not queue(name).queue_arguments, name


def test_no_chosen_id_can_look_generated() -> None:
    with pytest.raises(ValueError, match="may contain only letters, digits and - _ . @"):
        check_worker_id(f"{GENERATED_ID_MARK}host-1-abc")
