"""TagFilter: which activity tags a worker serves (semantics.md 1.9, 2.18), as duroxide's string forms."""

from __future__ import annotations

import json
from collections.abc import Iterable

from .replay.limits import MAX_TAG_NAME_BYTES, MAX_WORKER_TAGS
from .replay.yieldables import check_tag

__all__ = [
    "MAX_TAG_NAME_BYTES",
    "MAX_WORKER_TAGS",
    "ParsedFilter",
    "TagFilter",
    "check_tag",
    "parse_cli_tag_filter",
    "parse_filter",
]

_DEFAULT_AND = "default_and:"


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


class ParsedFilter:
    """A worker's tag filter as queue choices: untagged work or not, and which tags (None means every tag)."""

    def __init__(self, untagged: bool, tags: frozenset[str] | None):
        self.untagged = untagged
        self.tags = tags

    @property
    def any_tag(self) -> bool:
        return self.tags is None

    def matches(self, tag: str | None) -> bool:
        if tag is None:
            return self.untagged
        return self.tags is None or tag in self.tags


def parse_filter(value: str | None) -> ParsedFilter:
    """Read a TagFilter string (semantics.md 1.9). Unlike duroxide, which falls back to DefaultOnly, a string that
    is not a filter raises ValueError, so a typo cannot silently leave a worker pool idle."""
    if value is None or value == TagFilter.DEFAULT_ONLY:
        return ParsedFilter(True, frozenset())
    if value == TagFilter.ANY:
        return ParsedFilter(True, None)
    if value == TagFilter.NONE:
        return ParsedFilter(False, frozenset())
    try:
        spec = json.loads(value)
    except (TypeError, ValueError):
        spec = None
    if isinstance(spec, dict) and len(spec) == 1:
        ((kind, tags),) = spec.items()
        if kind in ("tags", "default_and") and isinstance(tags, list):
            return ParsedFilter(kind == "default_and", frozenset(_tag_list(tags)))
    raise ValueError(
        f"invalid worker_tag_filter {value!r}: use TagFilter.DEFAULT_ONLY, ANY, NONE, tags([...]) or default_and([...])"
    )


def parse_cli_tag_filter(value: str) -> str:
    """`celery worker --duroxide-tag-filter FILTER` as a worker_tag_filter string; ValueError when it is not one.
    FILTER is a worker_tag_filter string (`default_only`, `any`, `none`, the JSON of TagFilter.tags([...]) /
    TagFilter.default_and([...])) or a shell-friendly shorthand: `gpu`, `gpu,cpu` (those tags only) and
    `default_and:gpu,cpu` (untagged work and those tags)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("empty tag filter: use default_only, any, none, TAG[,TAG...] or default_and:TAG[,TAG...]")
    text = value.strip()
    if text in (TagFilter.DEFAULT_ONLY, TagFilter.ANY, TagFilter.NONE) or text.startswith("{"):
        parse_filter(text)
        return text
    if text.startswith(_DEFAULT_AND):
        return TagFilter.default_and(_split(text[len(_DEFAULT_AND) :]))
    return TagFilter.tags(_split(text))


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]
