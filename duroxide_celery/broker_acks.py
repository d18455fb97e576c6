"""Redis ack emulation is turned off in workers that consume only duroxide queues.

On Redis, kombu emulates acknowledgements: each delivered message is copied into an "unacked" hash and removed on
ack, two Redis transactions (each on a new client object) per message in the worker's main thread. Measured here,
that was about 70% of a turn worker's main-thread CPU. What it buys is redelivery of a message whose worker died,
which duroxide does not need: the store is the truth and the recovery sweep republishes whatever a lost message
carried (DESIGN sections 1 and 3). It also brings the visibility-timeout hazard: a message that runs longer than
the timeout is delivered again. So a worker whose queues are all duroxide queues turns it off for its own broker
connection. A worker that also consumes the app's other queues keeps it, and an app that sets `ack_emulation` in
`broker_transport_options` itself is left alone.
"""

from __future__ import annotations

import logging

from celery import Celery

from .tasks.queues import QueueNames

log = logging.getLogger(__name__)


def apply_to_worker(app: Celery, names: QueueNames) -> bool:
    """Turn ack emulation off for this worker's connection if it qualifies; returns whether it did."""
    options = dict(app.conf.broker_transport_options or {})
    if "ack_emulation" in options:
        return False  # the app decided
    consumed = list(app.amqp.queues.consume_from or {})
    if not consumed or not all(names.is_ours(name) for name in consumed):
        return False
    if app.connection_for_read().transport.driver_type != "redis":
        return False  # only kombu's Redis transport emulates acks
    options["ack_emulation"] = False
    app.conf.broker_transport_options = options
    log.debug("worker consumes only duroxide queues %s: Redis ack emulation off", sorted(consumed))
    return True
