"""Integrations with frameworks around Celery (`duroxide_celery.contrib.django`)."""
