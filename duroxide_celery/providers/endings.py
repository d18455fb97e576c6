"""Wake-ups for the waits on an instance's end (Client.wait_for_orchestration), so a wait returns when the turn
that ended the instance commits instead of at its next poll.

A wait still polls the store (the truth) with backoff; these only cut a sleep short. In this process a turn that
ended an instance says so directly (`endings.ended`). Across processes on PostgreSQL, that turn's commit sends a
NOTIFY on the store's channel (one per schema; the fence statement, hot_statements.fence_turn), and a listener
thread of each waiting process relays it. A lost
wake-up costs only the rest of a poll interval.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: The NOTIFY channel of the connection's schema (its search_path): one per store sharing a database.
NOTIFY_CHANNEL = "'dx_ended_' || left(md5(current_schema()), 16)"
#: Seconds the listener waits for notifications before checking whether it should stop.
_LISTEN_TICK_S = 1.0
#: Seconds before the listener reconnects after its connection failed.
_RECONNECT_S = 2.0


class Endings:
    """This process's waits, by instance id; `ended` wakes those of one instance (a wait re-reads the store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waits: dict[str, list[threading.Event]] = {}

    def watch(self, instance_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waits.setdefault(instance_id, []).append(event)
        return event

    def unwatch(self, instance_id: str, event: threading.Event) -> None:
        with self._lock:
            waits = self._waits.get(instance_id)
            if waits is not None and event in waits:
                waits.remove(event)
                if not waits:
                    del self._waits[instance_id]

    def ended(self, instance_id: str) -> None:
        with self._lock:
            for event in self._waits.get(instance_id, ()):
                event.set()


#: The waits of this process (one registry: any store's wake-up may concern them; a wait re-reads its own).
endings = Endings()


class EndingsListener:
    """PostgreSQL: a daemon thread LISTENing on the store's channel for this process's waits (started by the first
    wait; `stop` ends it). Its connection is taken out of `engine`'s pool for good (it listens in autocommit)."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        with self._lock:
            self._stop.clear()  # a thread asked to stop and still running carries on
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="duroxide-endings", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (within a tick: it closes its connection then); returns at once."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # noqa: BLE001 - the database went away: waits fall back to polling meanwhile
                log.warning("instance-end listener lost its connection (%s); reconnecting", type(exc).__name__)
                self._stop.wait(_RECONNECT_S)

    def _listen(self) -> None:
        pooled: Any = self._engine.raw_connection()
        pooled.detach()  # never handed back to the pool in autocommit: closed below
        try:
            conn = pooled.dbapi_connection
            conn.autocommit = True
            channel = conn.execute(f"SELECT {NOTIFY_CHANNEL}").fetchone()[0]
            conn.execute(f'LISTEN "{channel}"')  # a hex digest after a fixed prefix: nothing to quote
            while not self._stop.is_set():
                for note in conn.notifies(timeout=_LISTEN_TICK_S):
                    endings.ended(note.payload)
            conn.execute("UNLISTEN *")
        finally:
            pooled.close()
