"""The schema is created on first use, safely when several processes start at once on an empty database."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import sqlalchemy as sa

from duroxide_celery.providers.migrate import VERSION_TABLE, head_revision

# Each child opens the provider (which migrates), then writes and reads one instance of its own.
CHILD = textwrap.dedent(
    """
    import sys
    from duroxide_celery import Client, PostgresProvider, SqliteProvider
    kind, location, url, n = sys.argv[1:5]
    if kind == "sqlite":
        provider = SqliteProvider.open(location)
    else:
        provider = PostgresProvider.connect_with_schema(url, location)
    client = Client(provider)
    client.start_orchestration(f"proc-{n}", "Anything", {"n": int(n)})
    print(client.get_status(f"proc-{n}").status)
    """
)


def test_concurrent_first_use_migrates_once(store, tmp_path):
    from tests.integration.conftest import PG_URL

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, store.kind, store.location, PG_URL, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert out.strip() == "Running"
    provider = store.open()
    with provider.store.engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        count = conn.execute(sa.text("SELECT COUNT(*) FROM dx_instances")).scalar()
    assert versions == [head_revision()]
    assert count == 6
