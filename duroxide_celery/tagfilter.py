"""TagFilter: which activity tags a worker serves (semantics.md 1.9, 2.18), as duroxide's string forms."""

from __future__ import annotations

import json
from collections.abc import Iterable

from .replay.tasks import MAX_TAG_NAME_BYTES, check_tag

MAX_WORKER_TAGS = 5
__all__ = ["MAX_TAG_NAME_BYTES", "MAX_WORKER_TAGS", "TagFilter", "check_tag"]


def _tag_list(tags: Iterable[str]) -> list[str]:
    tags = [check_tag(t) for t in tags]
    if not tags:
        raise ValueError("a tag filter needs at least one tag")
    if len(tags) > MAX_WORKER_TAGS:
        raise ValueError(f"Worker can subscribe to at most {MAX_WORKER_TAGS} tags, got {len(tags)}")
    return tags


class TagFilter:
    """Filters for RuntimeOptions(worker_tag_filter=...): untagged only (default), any, none, or named tags."""

    DEFAULT_ONLY = "default_only"
    ANY = "any"
    NONE = "none"

    @staticmethod
    def tags(tags: Iterable[str]) -> str:
        return json.dumps({"tags": _tag_list(tags)})

    @staticmethod
    def default_and(tags: Iterable[str]) -> str:
        return json.dumps({"default_and": _tag_list(tags)})
