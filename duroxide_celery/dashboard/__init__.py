"""The duroxide-celery dashboard: every workflow instance, what it waits on, its timeline and history, and the
operator's actions (raise event, enqueue, cancel, delete), as a Flask blueprint or a standalone WSGI app.

Needs the `dashboard` extra (`pip install 'duroxide-celery[dashboard]'`); served by `duroxide-celery dashboard`.
"""

from .app import create_app, create_blueprint

__all__ = ["create_app", "create_blueprint"]
