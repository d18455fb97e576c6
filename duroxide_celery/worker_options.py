"""`celery worker --duroxide-tag-filter FILTER --duroxide-node-id NODE`: per-process tag filter and worker id.

`Runtime(provider, options, app=app)` adds both options to `app.user_options["worker"]` and a consumer bootstep to
`app.steps["consumer"]`, so any `celery -A proj worker` process of that app accepts them; a value given on the
command line overrides RuntimeOptions(worker_tag_filter=..., worker_node_id=...) for that process only. The hooks
live in duroxide_celery/tasks/hooks.py (what they do is described there); these names stay importable from here.
"""

from __future__ import annotations

from celery import Celery

from .tagfilter import parse_cli_tag_filter
from .tasks.hooks import NODE_ID_OPTION, TAG_FILTER_OPTION, install_worker_hooks
from .tasks.identity import check_worker_id

__all__ = ["NODE_ID_OPTION", "TAG_FILTER_OPTION", "check_node_id", "install_worker_options", "parse_cli_tag_filter"]

#: The worker id check under its command-line name (--duroxide-node-id).
check_node_id = check_worker_id


def install_worker_options(app: Celery) -> None:
    """Add the two `celery worker` options and the bootstep that applies them (and the engine's other worker
    hooks; idempotent)."""
    install_worker_hooks(app)
