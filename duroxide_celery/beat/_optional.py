"""Clear errors for the scheduler combinations whose base scheduler is an optional package."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_scheduler_module(module: str, package: str, roots: tuple[str, ...], combination: str) -> ModuleType:
    """Import `module`; when it (or the framework it needs, `roots`) is not installed, raise an ImportError that
    names the pip package. An import error from inside an installed package is not hidden."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in roots:
            raise
        raise ImportError(
            f"{combination} combines durable timers with {package}'s scheduler, which is not installed: "
            f"pip install {package}"
        ) from exc
