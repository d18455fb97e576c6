"""duroxide-python's `init_tracing` and `parse_result`, on Python logging."""

from __future__ import annotations

import json
import logging
from typing import Any

_configured = False


class _JsonFormatter(logging.Formatter):
    FIELDS = (
        "instance_id",
        "execution_id",
        "orchestration_name",
        "orchestration_version",
        "activity_name",
        "worker_id",
    )

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)})
        return json.dumps(entry)


def init_tracing(log_file: str, log_level: str | None = None, log_format: str | None = None) -> None:
    """Send the `duroxide_celery.*` logs to `log_file` (first call wins, as in duroxide)."""
    global _configured
    if _configured:
        return
    try:
        handler = logging.FileHandler(log_file)
    except OSError as exc:
        raise RuntimeError(f"Failed to open log file {log_file}: {exc}") from None
    if (log_format or "").lower() == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    level = getattr(logging, (log_level or "info").upper(), logging.INFO)
    root = logging.getLogger("duroxide_celery")
    root.addHandler(handler)
    root.setLevel(level)
    _configured = True


def parse_result(value: Any) -> Any:
    """Unwrap `{"ok": v}` to v and lists of them to lists; `{"err": e}` raises Exception(e)."""
    if isinstance(value, list):
        return [parse_result(v) for v in value]
    if isinstance(value, dict) and set(value) == {"ok"}:
        return value["ok"]
    if isinstance(value, dict) and set(value) == {"err"}:
        raise Exception(value["err"])
    return value
