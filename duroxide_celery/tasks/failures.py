"""Failed workflow steps, made visible to Celery's tooling.

The store records a failure first (the orchestration sees it through its inbox); only then does the task raise
one of these, so that Celery marks it FAILURE: a `task-failed` event with the error text (Flower), the
`task_failure` signal (Sentry and friends). They are in the engine tasks' `throws`: Celery logs them at INFO
without a traceback, since we log our own WARNING with the ids. The engine tasks ack failures
(`acks_on_failure_or_timeout`; activities are acked at start anyway), so raising never redelivers a step.

The exceptions carry one string, the display text: a prefork pool pickles them to its parent process.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

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


class StepFailed(Exception):
    """A workflow step failed, and its failure is recorded in the store."""


class ActivityFailed(StepFailed):
    """An activity raised (or returned a value that is not JSON, ran out of attempts, or has no handler on any
    worker); the failure is recorded and its orchestration was woken to handle it."""


class OrchestrationFailed(StepFailed):
    """A turn ended its orchestration as Failed; the failure is committed and published."""
