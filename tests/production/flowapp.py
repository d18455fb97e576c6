"""A Celery app for the flow-control test (test_flow_control_production.py): an activity limited per key, which
records in the test's PostgreSQL schema how many calls of its key run at that moment, across every worker process.

    celery -A tests.production.flowapp worker -Q <prefix>.activities

Settings come from the environment, as for tagapp (tests/production/app_env.py).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import sqlalchemy as sa

from tests.production.app_env import production_runtime

app, runtime = production_runtime("flowapp")
runtime.limit("CallApi", key_limit=2)

_engine: sa.Engine | None = None
_engine_lock = threading.Lock()


def _db() -> sa.Engine:
    """This process's engine on the test's schema (created after fork, on first use)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            url = os.environ["SHOP_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
            schema = os.environ["SHOP_DATABASE_SCHEMA"]
            _engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
        return _engine


def _count(key: str, delta: int) -> int:
    """Add `delta` to the calls of `key` running now (one atomic statement: the database is the one witness all
    worker processes share); returns the new count."""
    with _db().begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO flow_running (key, n) VALUES (:key, :delta) "
                "ON CONFLICT (key) DO UPDATE SET n = flow_running.n + :delta RETURNING n"
            ),
            {"key": key, "delta": delta},
        ).scalar_one()


@runtime.register_activity("CallApi")
def call_api(ctx: Any, item: dict[str, Any]) -> dict[str, Any]:
    key = item["key"]
    running = _count(key, 1)
    with _db().begin() as conn:
        conn.execute(
            sa.text("INSERT INTO flow_log (key, running, pid) VALUES (:key, :running, :pid)"),
            {"key": key, "running": running, "pid": os.getpid()},
        )
    time.sleep(0.2)  # a call that takes a while, so calls of one key would overlap without the limit
    _count(key, -1)
    return {"key": key, "pid": os.getpid()}


@runtime.register_orchestration("FanOut")
def fan_out(ctx: Any, items: list[dict[str, Any]]) -> Any:
    return (yield ctx.all_typed([ctx.schedule_activity("CallApi", i).with_key(i["key"]) for i in items]))
