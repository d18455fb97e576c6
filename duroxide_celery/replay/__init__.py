"""The pure replay engine: history events, yieldables, the orchestration context, inbox ingestion, the turn
driver and the commands a turn hands back.

Nothing here does I/O or imports Celery or SQLAlchemy; the store and the Celery tasks call into it.
"""

from .commands import TurnInput, TurnResult
from .context import OrchestrationContext
from .engine import run_turn
from .events import REPLAY_VERSION, HistoryEvent

__all__ = ["HistoryEvent", "OrchestrationContext", "REPLAY_VERSION", "TurnInput", "TurnResult", "run_turn"]
