"""Every exception duroxide-celery raises for callers to catch, in one place (`from duroxide_celery.errors import ...`).

Bad arguments raise the built-in TypeError and ValueError with a message naming the argument; the classes here
are for outcomes a caller may want to handle. This module imports nothing else of the package, so every layer
(providers, tasks, the Client) can use it.
"""

from __future__ import annotations

__all__ = [
    "ActivityFailed",
    "CannotDeleteSubOrchestration",
    "InstanceAlreadyExists",
    "InstanceNotFound",
    "InstanceStillRunning",
    "OperationTimedOut",
    "OrchestrationFailed",
    "RewindRefused",
    "ScheduleAlreadyExists",
    "ScheduleNotFound",
    "StepFailed",
    "StoreNotReady",
]


class OperationTimedOut(TimeoutError, RuntimeError):
    """A wait_* call ran out of time: both a TimeoutError and, as duroxide raises it, a RuntimeError."""


class InstanceNotFound(LookupError, RuntimeError):
    """A management call named an instance that does not exist (duroxide raises a RuntimeError)."""


class InstanceStillRunning(RuntimeError):
    """A call that needs a finished instance got a running one: delete_instance without force=True (the instance
    or a sub-orchestration of it still runs), or restart."""


class InstanceAlreadyExists(RuntimeError):
    """start_orchestration(..., if_exists="fail"), or restart to an explicit new id, named an existing instance."""


class RewindRefused(RuntimeError):
    """Client.rewind cannot rewind this instance (not Failed, canceled, or its history would not replay with the
    code now deployed); the message says which, and nothing was written."""


class CannotDeleteSubOrchestration(RuntimeError):
    """delete_instance on a sub-orchestration: only whole trees are deleted, from their root."""


class ScheduleNotFound(LookupError, RuntimeError):
    """A schedule call named a schedule that does not exist."""


class ScheduleAlreadyExists(ValueError, RuntimeError):
    """create_schedule with an id that is taken (delete the schedule first, or pick another id)."""


class StoreNotReady(RuntimeError):
    """The store cannot be used: unreachable, or its schema is not one this version knows."""


class StepFailed(Exception):
    """A workflow step failed, and its failure is recorded in the store (raised by engine tasks, so that Celery's
    events and Flower show FAILURE; the orchestration handles the failure itself)."""


class ActivityFailed(StepFailed):
    """An activity raised (or returned a value that is not JSON, ran out of attempts, or has no handler on any
    worker); the failure is recorded and its orchestration was woken to handle it."""


class OrchestrationFailed(StepFailed):
    """A turn ended its orchestration as Failed; the failure is committed and published."""
