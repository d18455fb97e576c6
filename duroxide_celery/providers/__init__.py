"""The durable store: schema, migrations, SQLite and PostgreSQL providers, and every SQL statement (store.py).

This package never imports Celery.
"""

from .providers import PostgresProvider, Provider, SqliteProvider, provider_from_url
from .store import Store

__all__ = ["PostgresProvider", "Provider", "SqliteProvider", "Store", "provider_from_url"]
