"""A Client that knows Django transactions: a start inside `atomic()` waits for the commit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...client import Client
from ...replay.yieldables import check_flow_key
from ...types import StartRequest


class DjangoClient(Client):
    """`start_orchestration(..., on_commit=...)`: True waits for the surrounding transaction of database `using`
    to commit (and starts nothing if it rolls back); None (the default) does so only inside an `atomic()` block,
    so the workflow's activities can read the rows the request wrote; False starts now. `key`: as
    Client.start_orchestration (what a start limit counts the instance under). `start_orchestrations` (bulk) waits
    the same way."""

    def start_orchestration(
        self,
        instance_id: str,
        orchestration_name: str,
        input: Any = None,
        *,
        on_commit: bool | None = None,
        using: str | None = None,
        key: str | None = None,
    ) -> None:
        self._start_when(instance_id, orchestration_name, input, None, on_commit, using, key)

    def start_orchestration_versioned(
        self,
        instance_id: str,
        orchestration_name: str,
        input: Any,
        version: str,
        *,
        on_commit: bool | None = None,
        using: str | None = None,
        key: str | None = None,
    ) -> None:
        self._start_when(instance_id, orchestration_name, input, version, on_commit, using, key)

    def start_orchestrations(
        self,
        starts: Iterable[StartRequest | tuple[Any, ...]],
        *,
        on_commit: bool | None = None,
        using: str | None = None,
    ) -> None:
        """Client.start_orchestrations (every item checked now, all written in one transaction, woken in one
        batch), deferred to the commit of the surrounding transaction as `on_commit` and `using` say."""
        from django.db import transaction

        checked = self._checked_starts(starts)
        if on_commit is None:
            on_commit = transaction.get_connection(using).in_atomic_block
        if not checked:
            return
        if on_commit:
            transaction.on_commit(lambda: self._create_many(checked, "keep"), using=using)
        else:
            self._create_many(checked, "keep")

    def _start_when(
        self,
        instance_id: str,
        name: str,
        input: Any,
        version: str | None,
        on_commit: bool | None,
        using: str | None,
        key: str | None = None,
    ) -> None:
        from django.db import transaction

        # Checked now, so a bad id, name, input or key fails at this call, not at commit time.
        payload = self._checked_start(instance_id, name, input, version)
        key = check_flow_key(key) if key is not None else None
        if on_commit is None:
            on_commit = transaction.get_connection(using).in_atomic_block
        if on_commit:
            transaction.on_commit(lambda: self._create(instance_id, name, payload, version, key=key), using=using)
        else:
            self._create(instance_id, name, payload, version, key=key)
