"""The durable store: schema, migrations, SQLite and PostgreSQL providers, and every SQL statement.

This package never imports Celery. `Store` (store.py) is one facade composed from one module per job: turns.py
(starts, leases, turn reads), commit.py (a turn's commit), activities.py (activity rows and sessions), due_work.py
(timers, claim deadlines, the recovery sweep) and management.py (status, history, trees, prune, metrics), over
base.py (transactions, the inbox); dialect.py holds what differs between SQLite and PostgreSQL, turn_shapes.py a
turn's transactions, dto.py the data the operations take and return.

The rule for statements: what every turn, activity and scheduler tick runs is prebuilt in hot_statements.py
(built once, so executing it goes straight to SQLAlchemy's compiled cache: building a Core statement costs more
CPU than the database spends running it). Statements are built per call only on cold paths: management (Client,
CLI, admin), the recovery sweep and tag discovery, and rare branches (a failed attempt, session claims and
heartbeats, expired claim deadlines, firing due timers on SQLite, signals).
"""

from .providers import PostgresProvider, Provider, SqliteProvider, provider_from_url
from .store import Store

__all__ = ["PostgresProvider", "Provider", "SqliteProvider", "Store", "provider_from_url"]
