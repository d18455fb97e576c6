"""WorkerIdentity: who this worker is (its `worker_id`) and which activity tags it serves, in one holder.

The Runtime creates it before its tasks are installed and hands the same object to everything that needs it (the
executors, the worker hooks, the embedded runtime). A `celery worker` given `--duroxide-node-id` or
`--duroxide-tag-filter` updates it once, through `Runtime.configure_worker`, before the worker consumes (and, under
prefork, before the pool forks, so its processes inherit it). Lease owners are per execution and derived from
`worker_id`; the session queue `<prefix>.sessions.<worker_id>` is named after it.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from ..options import check_worker_id
from ..tagfilter import ParsedFilter, parse_filter
from .queues import GENERATED_ID_MARK

__all__ = ["WorkerIdentity", "check_worker_id"]


@dataclass
class WorkerIdentity:
    """This worker's id, whether it was chosen (a stable id keeps its sessions across restarts) or generated, and
    its tag filter. Read it at each step: it is set once more by the worker hooks before the worker consumes."""

    worker_id: str
    #: Chosen by the operator (RuntimeOptions.worker_node_id, --duroxide-node-id), so a restart comes back as the
    #: same worker; a generated id is never seen again once the process ends.
    stable: bool
    tag_filter: ParsedFilter
    #: The engine queues this process's workers consume, set before they consume (empty: not a worker): which steps
    #: may run inline (RuntimeOptions.inline_steps; tasks/inline.py).
    consumed: frozenset[str] = field(default_factory=frozenset)
    #: Whether turns and activities run in one pool (one `celery worker` consuming both queues), so a turn may run
    #: the activity it scheduled; the embedded runtime keeps them apart (activities never take the turns' threads).
    shared_pool: bool = False

    @classmethod
    def create(cls, worker_id: str | None, tag_filter: str | None) -> WorkerIdentity:
        """From RuntimeOptions' worker_node_id and worker_tag_filter; a bad value raises ValueError here."""
        if worker_id is not None:
            return cls(check_worker_id(worker_id), True, parse_filter(tag_filter))
        # The mark gives its session queue a TTL (tasks/queues.py): no process will consume it after this one.
        generated = f"{GENERATED_ID_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return cls(generated, False, parse_filter(tag_filter))
