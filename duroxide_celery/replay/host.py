"""ContextHost: what OrchestrationContext needs from whatever replays the orchestration.

The context calls this protocol and ReplayEngine implements it, so the dependency runs one way (context -> host
<- engine), as Temporal's workflow API calls its abstract `_Runtime`. A test may drive a context with any object
that has these members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class ContextHost(Protocol):
    """The state of the running orchestration, and the fire-and-forget operations that record history."""

    @property
    def instance_id(self) -> str: ...

    @property
    def execution_id(self) -> int: ...

    @property
    def orchestration_name(self) -> str: ...

    @property
    def orchestration_version(self) -> str: ...

    @property
    def replaying(self) -> bool:
        """True while the code re-runs steps already in history."""
        ...

    @property
    def custom_status(self) -> str | None: ...

    @property
    def kv(self) -> Mapping[str, tuple[str, int]]:
        """The instance's KV entries as the code sees them now: key -> (value, last updated at, ms)."""
        ...

    def record_custom_status(self, status: str | None) -> None: ...

    def record_kv_set(self, key: str, value: str) -> None: ...

    def record_kv_clear(self, key: str) -> None: ...

    def record_kv_clear_all(self) -> None: ...
