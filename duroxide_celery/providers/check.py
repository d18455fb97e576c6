"""Is this store usable? One check, shared by `celery worker` start-up and the CLI, with a message a person can act on.

A worker that cannot reach its database, or finds a schema newer than its code, must stop at start with that
reason, not take messages it can only fail (DESIGN invariant 7: clear errors for bad input).
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreNotReady
from .providers import Provider

__all__ = ["StoreNotReady", "check_store"]


def describe(provider: Provider) -> str:
    """The store's URL without its password (safe for logs and error messages)."""
    if provider.is_in_memory:
        return "in-memory SQLite"
    return make_url(provider.url).render_as_string(hide_password=True)


def check_store(provider: Provider) -> None:
    """Open the store (creating or upgrading its schema, as first use does) and read from it; raise StoreNotReady
    with the reason when that fails."""
    where = describe(provider)
    try:
        store = provider.store
        store.known_tags()
    except StoreNotReady:
        raise
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise StoreNotReady(f"cannot use the duroxide store at {where}: {str(reason).strip().splitlines()[0]}") from exc
    except Exception as exc:  # alembic: a revision this code does not know (a newer deployment migrated the store)
        if "revision" in str(exc).lower():
            raise StoreNotReady(
                f"the duroxide store at {where} has a schema this version of duroxide-celery does not know ({exc}); "
                "upgrade duroxide-celery on this machine"
            ) from exc
        raise
