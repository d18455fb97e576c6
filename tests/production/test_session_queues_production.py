"""The session queue of a worker without a stable node id (generated, never seen again once the process ends) does
not outlive it on the broker: it is declared with a queue TTL (x-expires), and the worker deletes it at a clean
shutdown. A real `celery worker` (tests/production/sessionapp.py) on RabbitMQ and on Redis."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp.exceptions
import pytest
import redis

from duroxide_celery.tasks.queues import GENERATED_ID_MARK, GENERATED_SESSION_QUEUE_EXPIRES_S

from .conftest import AMQP_URL, REDIS_URL
from .test_sessions_production import APP, SessionCluster


@pytest.fixture(params=["rabbitmq", "redis"])
def cluster(request: pytest.FixtureRequest, postgres: None, tmp_path: Path) -> Iterator[SessionCluster]:
    if request.param == "redis":
        url = f"{REDIS_URL}/{request.getfixturevalue('redis_db')}"
    else:
        request.getfixturevalue("rabbitmq")
        url = AMQP_URL
    c = SessionCluster(request.param, url, tmp_path)
    try:
        c.worker("orch")
        yield c
    finally:
        c.close()


def _amqp(op: str, name: str, **kwargs: Any) -> Any:
    """One AMQP operation on its own channel (a refused one closes its channel)."""
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=2) as conn:
        return getattr(conn.channel(), op)(name, **kwargs)


def test_a_generated_workers_session_queue_has_a_ttl_and_goes_at_clean_shutdown(cluster: SessionCluster) -> None:
    c = cluster
    argv = ["worker", "-Q", f"{c.prefix}.activities", "-P", "threads", "-c", "2", "-l", "INFO"]
    argv += ["-n", f"gen-{c.prefix}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    worker = c.run("worker-generated", argv, APP)  # no --duroxide-node-id: a generated id
    worker.wait_for_log(" ready.")
    # The second step goes to the session queue: the turn worker's publisher declares it as the worker did.
    c.client.start_orchestration("gen-1", "Conversation", {"session": "gen-1", "turns": 2})
    result = c.client.wait_for_orchestration("gen-1", 60_000)
    assert result.status == "Completed", result.error
    node = result.output[0]["node"]
    assert node.startswith(GENERATED_ID_MARK) and result.output[1] == {"node": node, "seen": [0, 1]}
    name = f"{c.prefix}.sessions.{node}"
    binding = f"_kombu.binding.{name}"
    try:
        if c.broker == "rabbitmq":
            _amqp("queue_declare", name, passive=True)  # it exists
            with pytest.raises(amqp.exceptions.PreconditionFailed, match="x-expires"):
                _amqp("queue_declare", name, durable=True, auto_delete=False)  # it was declared with a TTL ...
            ttl = {"x-expires": GENERATED_SESSION_QUEUE_EXPIRES_S * 1000}
            _amqp("queue_declare", name, durable=True, auto_delete=False, arguments=ttl)  # ... exactly this one
        else:
            assert redis.Redis.from_url(c.broker_url).exists(binding)

        worker.popen.send_signal(signal.SIGTERM)  # a clean (warm) shutdown
        assert worker.popen.wait(timeout=60) == 0, worker.tail()
        assert f"deleted session queue {name}" in worker.text(), worker.tail()
        if c.broker == "rabbitmq":
            with pytest.raises(amqp.exceptions.NotFound):
                _amqp("queue_declare", name, passive=True)
        else:
            assert not redis.Redis.from_url(c.broker_url).exists(binding)
    finally:
        if c.broker == "rabbitmq":
            for op in ("queue_delete", "exchange_delete"):  # the exchange stays (see tasks/queues.py)
                try:
                    _amqp(op, name)
                except Exception:  # noqa: BLE001 - already gone
                    pass
