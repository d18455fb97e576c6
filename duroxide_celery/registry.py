"""The registry of orchestrations (by name and semver version) and activities (by name): what a Runtime serves,
and what duroxide_celery.testing's harness runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from .replay.limits import MAX_NAME_CHARS, MAX_VERSION_CHARS, check_name

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_VERSION = "1.0.0"
_VERSION = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?$")

__all__ = ["DEFAULT_VERSION", "Registry"]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.split(r"[-+]", version)[0].split("."))


def _check_name(name: Any, what: str) -> str:
    """A name the store can hold, by the Client's rule (replay.limits.check_name)."""
    return check_name(name, f"{what} name", MAX_NAME_CHARS)


def _check_replacement(old: Callable[..., Any] | None, new: Callable[..., Any], what: str) -> None:
    """A name (and version) names one handler: registering the same function again is a no-op, another one under
    the same name would silently change what running instances replay (register a new version instead)."""
    if old is not None and old is not new:
        raise ValueError(f"{what} is already registered with {_describe(old)}; got {_describe(new)}")


def _describe(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class Registry:
    """Handlers by name; names and versions are checked when they are registered."""

    def __init__(self) -> None:
        self._orchestrations: dict[str, dict[str, Callable[..., Any]]] = {}
        self.activities: dict[str, Callable[..., Any]] = {}

    def register_activity(self, name: str, fn: F | None = None) -> Any:
        """Register `fn(ctx, input)` as activity `name`; usable as `@runtime.register_activity("Name")`."""
        _check_name(name, "activity")

        def register(func: F) -> F:
            if not callable(func):
                raise TypeError(f"activity {name!r} must be callable, got {func!r}")
            _check_replacement(self.activities.get(name), func, f"activity {name!r}")
            self.activities[name] = func
            return func

        return register(fn) if fn is not None else register

    register_activity_typed = register_activity

    def register_orchestration(self, name: str, fn: F | None = None) -> Any:
        """Register generator `fn(ctx, input)` as orchestration `name`, version 1.0.0."""
        return self.register_orchestration_versioned(name, DEFAULT_VERSION, fn)

    register_orchestration_typed = register_orchestration

    def register_orchestration_versioned(self, name: str, version: str, fn: F | None = None) -> Any:
        """Register a specific semver `version`; new starts use the latest, running executions keep theirs."""
        _check_name(name, "orchestration")
        if not isinstance(version, str) or not _VERSION.fullmatch(version) or len(version) > MAX_VERSION_CHARS:
            raise ValueError(f"orchestration version must be semver like '1.0.2', got {version!r}")

        def register(func: F) -> F:
            if not callable(func):
                raise TypeError(f"orchestration {name!r} must be callable, got {func!r}")
            versions = self._orchestrations.setdefault(name, {})
            _check_replacement(versions.get(version), func, f"orchestration {name!r} version {version}")
            versions[version] = func
            return func

        return register(fn) if fn is not None else register

    register_orchestration_versioned_typed = register_orchestration_versioned

    def resolve_orchestration(self, name: str, version: str | None) -> tuple[str, Callable[..., Any]] | None:
        """(version, handler) for an exact version, or the latest when version is None; None if not here."""
        versions = self._orchestrations.get(name)
        if not versions:
            return None
        if version is not None:
            fn = versions.get(version)
            return (version, fn) if fn is not None else None
        latest = max(versions, key=_version_key)
        return latest, versions[latest]
