"""The store: one API over SQLite and PostgreSQL (SQLAlchemy Core, parameterized), composed from one module per job.

- `base.py`: transactions and the inbox; `dialect.py`: what differs per database (the store never branches on it);
  `turn_shapes.py`: a turn's transactions; `dto.py`: what the operations take and return.
- `turns.py` (starts, leases, turn reads) and `commit.py` (a turn's commit: `commit_turn`), `activities.py`
  (activity rows and sessions), `due_work.py` (timers, claim deadlines, recovery sweep), `management.py` (status,
  history, trees, prune, metrics).

The rule for statements (prebuilt on the hot path, built per call only on cold paths) is written in the
package docstring (`providers/__init__.py`).
"""

from __future__ import annotations

from .activities import ActivityStore
from .base import now_ms
from .commit import TurnCommit
from .dto import (
    ClaimedWorkItem,
    HeldWorkItem,
    InstanceLease,
    LeaseLost,
    PendingActivity,
    PublishPlan,
    RecordedOutcome,
    SessionBusy,
    SessionPolicy,
    TreeDeletion,
    TurnChanges,
)
from .due_work import DueWorkStore
from .flow import ActivityLimit, HeldActivity
from .management import ManagementStore

__all__ = [
    "ActivityLimit",
    "ClaimedWorkItem",
    "HeldActivity",
    "HeldWorkItem",
    "InstanceLease",
    "LeaseLost",
    "PendingActivity",
    "PublishPlan",
    "RecordedOutcome",
    "SessionBusy",
    "SessionPolicy",
    "Store",
    "TreeDeletion",
    "TurnChanges",
    "now_ms",
]


class Store(TurnCommit, ActivityStore, DueWorkStore, ManagementStore):
    """Every operation of the store, one facade (the Client, workers, CLI and Django app hold one per process)."""
