"""The pure replay engine: history events, task descriptors, the orchestration context and the turn driver.

Nothing here does I/O or imports Celery or SQLAlchemy; the store and the Celery tasks call into it.
"""

from .context import OrchestrationContext
from .engine import REPLAY_VERSION, TurnInput, TurnResult, run_turn
from .events import HistoryEvent

__all__ = ["HistoryEvent", "OrchestrationContext", "REPLAY_VERSION", "TurnInput", "TurnResult", "run_turn"]
