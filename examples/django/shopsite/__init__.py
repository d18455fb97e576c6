# Celery's Django layout: the Celery app, and with it the project's duroxide Runtime, loads with Django.
from .celery import app as celery_app

__all__ = ("celery_app",)
