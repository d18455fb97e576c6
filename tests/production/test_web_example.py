"""examples/web/app.py (the Flask shop front) over the shop's PostgreSQL store, in a subprocess with the
environment a deployment gives it: unknown and impossible order ids answer 404, the index lists instances."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Cluster

pytest.importorskip("flask", reason="the web example needs Flask (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json
from examples.web.app import app
tc = app.test_client()
print(json.dumps({url: [r.status_code, r.get_data(as_text=True)] for url in
      ("/orders/a%00b", "/api/orders/a%00b", "/orders/nobody", "/")
      for r in [tc.get(url)]}))
"""


def test_the_web_example_answers_404_for_ids_that_cannot_exist(redis_cluster: Cluster) -> None:
    redis_cluster.client.start_orchestration("web-1", "OrderSaga", {"id": "web-1", "items": [], "card": "4242"})
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=redis_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    assert [answers[u][0] for u in ("/orders/a%00b", "/api/orders/a%00b", "/orders/nobody")] == [404, 404, 404]
    status, index = answers["/"]
    assert status == 200
    assert '<a href="/orders/web-1">web-1</a> Running</li>' in index
