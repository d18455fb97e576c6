"""Failed workflow steps, made visible to Celery's tooling.

The store records a failure first (the orchestration sees it through its inbox); only then does the task raise
one of these, so that Celery marks it FAILURE: a `task-failed` event with the error text (Flower), the
`task_failure` signal (Sentry and friends). They are in the engine tasks' `throws`: Celery logs them at INFO
without a traceback, since we log our own WARNING with the ids. The engine tasks ack failures
(`acks_on_failure_or_timeout`; activities are acked at start anyway), so raising never redelivers a step.

The exceptions carry one string, the display text: a prefork pool pickles them to its parent process.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import uuid
from datetime import UTC, datetime

from celery.exceptions import WorkerShutdown, WorkerTerminate

#: Where the engine's workers report failed steps and waits for missing handlers (WARNING).
worker_log = logging.getLogger("duroxide_celery.worker")

#: Error texts in logs and task events are cut to this many characters (they may quote user data).
ERROR_TEXT_LIMIT = 200


def clip(text: str | None, limit: int = ERROR_TEXT_LIMIT) -> str:
    """The first line of an error text, at most `limit` characters (an orchestration's error holds its traceback
    on the following lines)."""
    first = (text or "").strip().split("\n", 1)[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


def when(epoch_ms: int) -> str:
    """A UTC time for people (logs, `waiting_reason`), to the second."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="seconds")


#: What a failure reads when its exception's own `str()` raises (as Python's traceback module says it).
UNPRINTABLE = "<exception str() failed>"


def describe(exc: BaseException) -> str:
    """`<type name>: <text>` of an exception raised by user code, even when its `__str__` raises."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not turn a recorded failure into a re-run
        text = UNPRINTABLE
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def raised_by_user_code(exc: BaseException) -> bool:
    """Whether a BaseException that escaped orchestration or activity code is that code's own doing (SystemExit,
    KeyboardInterrupt, GeneratorExit or a BaseException subclass it raised: recorded as its failure, once), rather
    than the worker process being stopped: Celery's WorkerShutdown/WorkerTerminate, or a KeyboardInterrupt in the
    main thread while Python's own SIGINT handler is installed (a Ctrl-C reaches only the main thread). Those
    propagate, and the step runs again elsewhere."""
    if isinstance(exc, WorkerShutdown | WorkerTerminate):
        return False
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        try:
            return signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        except ValueError:  # pragma: no cover - getsignal works in the main thread
            return True
    return True


_owner_count = itertools.count(1)
_owner_process: tuple[int, str] = (0, "")


def lease_owner(node: str) -> str:
    """A new lease holder's identity, `<node>:<pid>.<token>:<n>`: one per turn or activity execution, so that two
    holders in one process (threads, or prefork children that share the node id they inherited) never pass each
    other's owner checks. The token is drawn again after a fork (pids are reused across machines and restarts);
    the node part is cut so the whole fits the 256-character lock_owner columns. Session ownership stays with the
    node id (`Runtime.worker_id`): only leases are per holder."""
    global _owner_process
    pid = os.getpid()
    if _owner_process[0] != pid:
        _owner_process = (pid, uuid.uuid4().hex[:8])
    return f"{node[:200]}:{pid}.{_owner_process[1]}:{next(_owner_count)}"
