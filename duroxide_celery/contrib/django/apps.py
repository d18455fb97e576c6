"""The Django app: `INSTALLED_APPS += ["duroxide_celery.contrib.django"]`."""

from __future__ import annotations

from django.apps import AppConfig


class DuroxideConfig(AppConfig):
    name = "duroxide_celery.contrib.django"
    label = "duroxide"
    verbose_name = "Durable workflows"

    def ready(self) -> None:
        """Import every installed app's `workflows` module, so its decorated orchestrations and activities are
        registered in every process that sets Django up (web, `celery worker`, `manage.py`)."""
        from django.utils.module_loading import autodiscover_modules

        from . import conf

        settings = conf.load()
        conf.apply_json_encoder(settings)  # also in processes that never call install()
        autodiscover_modules(settings.workflows_module)
