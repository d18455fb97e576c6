import os

from celery import Celery

from duroxide_celery.contrib.django import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
install(app)  # the project's duroxide Runtime, on this app (settings.DUROXIDE)
