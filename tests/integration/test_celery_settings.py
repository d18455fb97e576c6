"""Runtime(app=...) registers the engine on the user's Celery app and fills in the safe settings baseline only
where the app's own configuration is silent (DESIGN section 3)."""

from __future__ import annotations

from celery import Celery

from duroxide_celery import Runtime, SqliteProvider


def test_baseline_applied_to_a_plain_app():
    app = Celery("plain")
    runtime = Runtime(SqliteProvider.in_memory(), app=app)
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert (app.conf.task_acks_late, app.conf.worker_prefetch_multiplier) == (True, 1)
    assert app.conf.task_reject_on_worker_lost is True
    assert {"duroxide.turn", "duroxide.activity", "duroxide.fire_timers", "duroxide.recover"} <= set(app.tasks)
    assert app.duroxide_runtime is runtime


def test_user_settings_win_over_the_baseline():
    class Settings:
        task_acks_late = False
        worker_prefetch_multiplier = 4

    app = Celery("configured")
    app.config_from_object(Settings)
    Runtime(SqliteProvider.in_memory(), app=app)
    assert (app.conf.task_acks_late, app.conf.worker_prefetch_multiplier) == (False, 4)
    assert app.conf.task_serializer == "json"


def test_django_style_namespace_is_respected():
    class DjangoSettings:
        CELERY_TASK_ACKS_LATE = False

    app = Celery("django")
    app.config_from_object(DjangoSettings, namespace="CELERY")
    Runtime(SqliteProvider.in_memory(), app=app)
    assert app.conf.task_acks_late is False
    assert app.conf.task_reject_on_worker_lost is True


def test_two_apps_in_one_process_keep_their_own_runtimes():
    first, second = Celery("one"), Celery("two")
    rt1 = Runtime(SqliteProvider.in_memory(), app=first)
    rt2 = Runtime(SqliteProvider.in_memory(), app=second)
    assert first.duroxide_runtime is rt1 and second.duroxide_runtime is rt2
    assert first.tasks["duroxide.turn"] is not second.tasks["duroxide.turn"]
