"""A Client that knows Django transactions: a start inside `atomic()` waits for the commit."""

from __future__ import annotations

from typing import Any

from ... import client as base
from ...client import Client


class DjangoClient(Client):
    """`start_orchestration(..., on_commit=...)`: True waits for the surrounding transaction of database `using`
    to commit (and starts nothing if it rolls back); None (the default) does so only inside an `atomic()` block,
    so the workflow's activities can read the rows the request wrote; False starts now."""

    def start_orchestration(
        self,
        instance_id: str,
        orchestration_name: str,
        input: Any = None,
        *,
        on_commit: bool | None = None,
        using: str | None = None,
    ) -> None:
        self._deferred(on_commit, using, super().start_orchestration, instance_id, orchestration_name, input)

    def start_orchestration_versioned(
        self,
        instance_id: str,
        orchestration_name: str,
        input: Any,
        version: str,
        *,
        on_commit: bool | None = None,
        using: str | None = None,
    ) -> None:
        self._deferred(
            on_commit, using, super().start_orchestration_versioned, instance_id, orchestration_name, input, version
        )

    @staticmethod
    def _deferred(on_commit: bool | None, using: str | None, start: Any, *args: Any) -> None:
        from django.db import transaction

        if on_commit is None:
            on_commit = transaction.get_connection(using).in_atomic_block
        if on_commit:
            # Checked now, so a bad id, name or input fails at this call, not at commit time.
            instance_id, name, payload = args[:3]
            base._check_instance_id(instance_id)
            base._check_name(name, "orchestration name", base.MAX_NAME_CHARS)
            base._encode(payload, "orchestration input")
            transaction.on_commit(lambda: start(*args), using=using)
        else:
            start(*args)
