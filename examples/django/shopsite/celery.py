import os

from celery import Celery

from duroxide_celery.contrib.django import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")

app = Celery("shopsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
install(app)  # the one place the Runtime is made: workers and web processes both import this module
