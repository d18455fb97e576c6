"""Redis ack emulation is off in workers that consume only duroxide queues (duroxide_celery/broker_acks.py).

The WorkController is only constructed (its worker_init hook runs; nothing connects to the broker), so these run
without services. tests/production/test_broker_acks.py asks real worker processes for their settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from duroxide_celery import Runtime, RuntimeOptions, SqliteProvider

# Constructing a WorkController as root warns about superuser privileges; nothing runs here.
pytestmark = pytest.mark.filterwarnings("ignore::celery.platforms.SecurityWarning")


def _app(tmp_path: Path, broker: str, **conf: object) -> Celery:
    app = Celery("acks-test", broker=broker, set_as_current=False)
    app.conf.update(conf)
    Runtime(SqliteProvider.open(str(tmp_path / "store.db")), RuntimeOptions(), app=app)
    return app


def _build_worker(app: Celery, queues: list[str] | None) -> None:
    app.Worker(queues=queues, pool_cls="solo", without_mingle=True, without_gossip=True, without_heartbeat=True)


def test_a_worker_of_duroxide_queues_on_redis_skips_ack_emulation(tmp_path: Path) -> None:
    for queues in (
        ["duroxide.orchestrator"],
        ["duroxide.activities", "duroxide.activities.gpu"],
        ["duroxide.sessions.node-1"],
    ):
        app = _app(tmp_path, "redis://127.0.0.1:6379/0", broker_transport_options={"visibility_timeout": 60})
        _build_worker(app, queues)
        assert app.conf.broker_transport_options == {"visibility_timeout": 60, "ack_emulation": False}, queues


def test_a_worker_that_also_consumes_other_queues_keeps_ack_emulation(tmp_path: Path) -> None:
    for queues in (["duroxide.orchestrator", "emails"], None):  # None: no -Q, the app's `celery` queue too
        app = _app(tmp_path, "redis://127.0.0.1:6379/0")
        _build_worker(app, queues)
        assert "ack_emulation" not in app.conf.broker_transport_options, queues


def test_an_app_that_sets_ack_emulation_itself_wins(tmp_path: Path) -> None:
    app = _app(tmp_path, "redis://127.0.0.1:6379/0", broker_transport_options={"ack_emulation": True})
    _build_worker(app, ["duroxide.orchestrator"])
    assert app.conf.broker_transport_options == {"ack_emulation": True}


def test_other_transports_are_left_alone(tmp_path: Path) -> None:
    app = _app(tmp_path, "amqp://guest:guest@127.0.0.1:5672//")
    _build_worker(app, ["duroxide.orchestrator"])
    assert "ack_emulation" not in app.conf.broker_transport_options


def test_a_worker_of_another_app_in_the_process_is_not_touched(tmp_path: Path) -> None:
    ours = _app(tmp_path, "redis://127.0.0.1:6379/0")
    other = Celery("other-app", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    other.conf.task_queues = None
    _build_worker(other, ["duroxide.orchestrator"])
    assert "ack_emulation" not in (other.conf.broker_transport_options or {})
    assert "ack_emulation" not in (ours.conf.broker_transport_options or {})
