"""Durable timers and the recovery sweep in Celery beat, with the app's own beat schedule, in real processes.

A host app (beat_hostapp.py) has its own task `host.tick` and a `beat_schedule` entry for it; each run appends a
line to a marks file, so the test sees that the app's entry runs. Its orchestration `Nap` waits on a durable
timer, which only the beat scheduler fires in production, then runs an activity.

Cases: `celery beat -S duroxide_celery.beat:TimerScheduler` (Redis and RabbitMQ); work started by a Client that
sends no wake-up, delivered by beat's in-process sweep; django-celery-beat's DatabaseScheduler combined with the
mixin; `celery worker -B --scheduler ...`; celery-redbeat; a beat whose database is unreachable keeps running the
app's entries.
None of them may send a `duroxide.recover` task message: the worker logs every task message it receives
("Task <name>[<id>] received") and beat logs every entry it sends ("Sending due task <entry> (<task>)"), and the
engine's queues are consumed only by the workers under test, so the name appearing in neither log means no such
message was sent or delivered.

The unit tests at the end (no services) pin the mixin's contract: the base scheduler's tick is kept, errors are
logged and retried, the sweep's threshold and interval, clear errors for a missing runtime, a wrong base order
and a missing optional package.
"""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, beat

from duroxide_celery import Client
from duroxide_celery.tasks.binding import bind_runtime

from .conftest import AMQP_URL, REDIS_URL, ROOT, Cluster, Proc, _delete_amqp_entities
from .helpers import histories, outputs

APP = "tests.production.beat_hostapp"
TIMER_SCHEDULER = "duroxide_celery.beat:TimerScheduler"
#: The durable timer each test instance waits on.
NAP_MS = 1500


class HostCluster(Cluster):
    """The conftest Cluster (schema, queue prefix, process groups killed at teardown) running the host app."""

    def __init__(self, broker: str, broker_url: str, tmp_path: Path):
        super().__init__(broker, broker_url, tmp_path)
        self.marks = tmp_path / "marks.txt"
        self.env["BEAT_HOST_MARKS"] = str(self.marks)

    def _schedule_file(self) -> str:
        return str(self.dir / f"beat-schedule-{len(self.procs)}")

    def host_worker(self, *, beat_scheduler: str | None = None) -> Proc:
        """One worker for the app's own queue and the engine's; with `beat_scheduler`, beat embedded (`-B`)."""
        queues = ",".join(f"{self.prefix}.{q}" for q in ("host", "orchestrator", "activities"))
        args = ["worker", "-Q", queues, "-P", "threads", "-c", "4", "-n", f"host{len(self.procs)}-{self.prefix}@%h"]
        args += ["-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"]
        if beat_scheduler:
            # `--scheduler`, not `-S`: for `celery worker`, -S is --statedb (a file name), and beat would silently
            # run celery's default scheduler without durable timers.
            args += ["-B", "--scheduler", beat_scheduler, "-s", self._schedule_file()]
        proc = self.run("worker", args, APP)
        proc.wait_for_log(" ready.")
        return proc

    def host_beat(self, scheduler: str = TIMER_SCHEDULER, env: dict[str, str] | None = None) -> Proc:
        proc = self.run("beat", ["beat", "-S", scheduler, "-s", self._schedule_file(), "-l", "INFO"], APP, env)
        proc.wait_for_log("beat: Starting")
        return proc

    def marks_from(self, source: str) -> int:
        """How many times the app's `host.tick` ran for `source`."""
        if not self.marks.exists():
            return 0
        return self.marks.read_text().splitlines().count(source)

    def wait_marks(self, source: str, count: int = 2) -> None:
        self.wait_for(lambda: self.marks_from(source) >= count, f"{count} runs of host.tick from {source}")

    def close(self) -> None:
        super().close()
        if self.broker == "rabbitmq":
            _delete_amqp_entities(self.prefix, ("host",))


@pytest.fixture
def host_redis(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[HostCluster]:
    cluster = HostCluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    yield cluster
    cluster.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def host_any(request: pytest.FixtureRequest, postgres: None, tmp_path: Path) -> Iterator[HostCluster]:
    if request.param == "redis":
        cluster = HostCluster("redis", f"{REDIS_URL}/{request.getfixturevalue('redis_db')}", tmp_path)
    else:
        request.getfixturevalue("rabbitmq")
        cluster = HostCluster("rabbitmq", AMQP_URL, tmp_path)
    yield cluster
    cluster.close()


def start_nap(cluster: HostCluster, client: Client | None = None) -> str:
    instance = f"nap-{uuid.uuid4().hex[:8]}"
    (client or cluster.client).start_orchestration(instance, "Nap", NAP_MS)
    return instance


def assert_napped(cluster: HostCluster, instance: str) -> None:
    """Completed with the activity's output, after a durable timer that beat fired exactly once."""
    cluster.wait_all_terminal([instance])
    assert outputs(cluster, [instance]) == {instance: {"slept_ms": NAP_MS}}
    kinds = [kind for _, kind, _ in histories(cluster, [instance])[instance][1]]
    assert kinds.count("TimerCreated") == 1 and kinds.count("TimerFired") == 1, kinds
    assert kinds[-1] == "OrchestrationCompleted", kinds


def assert_no_recover_messages(*procs: Proc) -> None:
    """Beat sent only the app's entries, and every task message a worker received was the app's task or a workflow
    step (`orch:<Name>#<id>` / `act:<Name>#<id>`): no `duroxide.recover`, no other housekeeping message."""
    for proc in procs:
        text = proc.text()
        sent = set(re.findall(r"Sending due task (\S+) \((\S+)\)", text))
        assert {task for _, task in sent} <= {"host.tick", "celery.backend_cleanup"}, sent
        received = set(re.findall(r"Task (\S+)\[[0-9a-f-]+\] received", text))
        others = {name for name in received if name != "host.tick" and not re.match(r"(orch|act):\w+#", name)}
        assert not others, f"{proc.name} received housekeeping messages {others}:\n{proc.tail()}"
        assert "Traceback" not in text, f"{proc.name} logged an error:\n{proc.tail(80)}"


def test_timer_scheduler_keeps_the_apps_beat_schedule_and_fires_durable_timers(host_any: HostCluster) -> None:
    cluster = host_any
    worker = cluster.host_worker()
    beat_proc = cluster.host_beat()
    instance = start_nap(cluster)

    assert_napped(cluster, instance)
    cluster.wait_marks("beat_schedule")
    assert "Sending due task host-tick (host.tick)" in beat_proc.text()
    assert "Task host.tick[" in worker.text()  # received and run by the worker, from beat
    assert "durable timers ->" in beat_proc.text()  # the startup banner says what this beat also does
    assert_no_recover_messages(worker, beat_proc)


def test_beat_sweep_delivers_work_from_a_client_that_sends_no_wakeup(host_redis: HostCluster) -> None:
    cluster = host_redis
    silent = Client(cluster.provider)  # no Celery app: nothing is published, only rows are written
    worker = cluster.host_worker()
    before = start_nap(cluster, silent)  # pending before beat runs: beat's first sweep delivers it

    beat_proc = cluster.host_beat()
    assert_napped(cluster, before)

    seen = len(beat_proc.text())
    after = start_nap(cluster, silent)  # started while beat runs: a later, periodic sweep delivers it
    assert_napped(cluster, after)
    assert "recovery sweep republished 1 instance pokes" in beat_proc.text()[seen:], beat_proc.tail()
    assert_no_recover_messages(worker, beat_proc)


def test_django_celery_beat_database_scheduler_with_durable_timers(host_redis: HostCluster, tmp_path: Path) -> None:
    pytest.importorskip("django_celery_beat", reason="django-celery-beat is not installed (pip install -e '.[dev]')")
    cluster = host_redis
    django_env = {
        "DJANGO_SETTINGS_MODULE": "tests.production.beat_django_settings",
        "BEAT_DJANGO_DB": str(tmp_path / "django.sqlite3"),
    }
    setup = subprocess.run(
        [sys.executable, "-m", "tests.production.beat_django_setup"],
        cwd=ROOT,
        env=dict(cluster.env, **django_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr

    worker = cluster.host_worker()
    beat_proc = cluster.host_beat("duroxide_celery.beat.django:DatabaseScheduler", django_env)
    instance = start_nap(cluster)

    assert_napped(cluster, instance)
    cluster.wait_marks("periodic_task")  # the PeriodicTask row made "in the admin"
    cluster.wait_marks("beat_schedule")  # the app's beat_schedule entry, which django-celery-beat stores as a row
    assert "DatabaseScheduler" in beat_proc.text()
    assert_no_recover_messages(worker, beat_proc)


def test_worker_with_embedded_beat_runs_the_apps_entries_and_durable_timers(host_any: HostCluster) -> None:
    cluster = host_any
    worker = cluster.host_worker(beat_scheduler=TIMER_SCHEDULER)
    instance = start_nap(cluster)

    assert_napped(cluster, instance)
    cluster.wait_marks("beat_schedule")
    assert "beat: Starting" in worker.text()
    assert_no_recover_messages(worker)


def test_worker_dash_s_is_statedb_and_the_beat_without_timers_says_so(host_redis: HostCluster) -> None:
    """`celery worker -B -S <scheduler>` is a trap: -S is --statedb for a worker, so beat runs celery's default
    scheduler. The app's entries run, durable timers do not, and beat logs a WARNING saying how to fix it."""
    cluster = host_redis
    statedb = "duroxide_celery.beat:TimerScheduler"  # relative: the worker creates it in its working directory
    try:
        args = ["worker", "-Q", f"{cluster.prefix}.host", "-P", "threads", "-B", "-S", statedb]
        args += ["-s", cluster._schedule_file(), "-l", "INFO", "--without-mingle", "--without-gossip"]
        worker = cluster.run("worker", args, APP)
        worker.wait_for_log(" ready.")
        cluster.wait_for(lambda: "which has no durable timers" in worker.text(), "beat's warning")
        assert "--scheduler duroxide_celery.beat:TimerScheduler" in worker.text()
    finally:
        for leftover in ROOT.glob(statedb + "*"):
            leftover.unlink()


def test_redbeat_scheduler_with_durable_timers(host_redis: HostCluster) -> None:
    pytest.importorskip("redbeat", reason="celery-redbeat is not installed (pip install -e '.[dev]')")
    cluster = host_redis
    worker = cluster.host_worker()
    beat_proc = cluster.host_beat("duroxide_celery.beat.redbeat:RedBeatScheduler")
    instance = start_nap(cluster)

    assert_napped(cluster, instance)
    cluster.wait_marks("beat_schedule")
    assert "beat: Acquired lock" in beat_proc.text()
    assert_no_recover_messages(worker, beat_proc)


def test_beat_keeps_running_the_apps_entries_while_the_database_is_down(host_redis: HostCluster) -> None:
    cluster = host_redis
    # Nothing listens on port 9: every store round fails, the app's entry must still be sent.
    down = {"SHOP_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/test"}
    beat_proc = cluster.host_beat(env=down)
    cluster.wait_for(
        lambda: beat_proc.text().count("Sending due task host-tick") >= 3, "beat to keep sending the app's entry"
    )
    cluster.wait_for(lambda: "failed again" in beat_proc.text(), "beat to log repeated store failures")
    assert beat_proc.popen.poll() is None, beat_proc.tail()
    assert "durable timers / recovery sweep failed; retrying" in beat_proc.text()


# -- the mixin's contract, without services ---------------------------------------------------------------------


class FakeStore:
    """Answers the calls fire_what_is_due and sweep make; `fail` makes every call raise."""

    turns_may_wait = True  # as on PostgreSQL: beat fires timers ahead of their time

    def __init__(self) -> None:
        self.fail = False
        self.sweeps: list[int] = []

    def _check(self) -> None:
        if self.fail:
            raise ConnectionError("database is down")

    def next_due(self) -> tuple[None, None, None]:
        """Nothing due: no timer, no claim deadline, no rate admission."""
        self._check()
        return None, None, None

    def admit_waiting_starts(self) -> list[str]:
        return []

    def admit_waiting(self) -> list[Any]:
        return []

    def stale_instances(self, older_than_ms: int) -> list[str]:
        self._check()
        self.sweeps.append(older_than_ms)
        return []

    def stale_work_items(self, older_than_ms: int) -> list[Any]:
        return []

    @contextmanager
    def read(self) -> Iterator[Any]:
        """The schedules' due-index read (ScheduleStore.next_due): there is no schedule."""
        self._check()
        yield SimpleNamespace(execute=lambda *a, **k: SimpleNamespace(scalar=lambda: None))


def fake_app(store: FakeStore, interval_s: float = 3600.0) -> Celery:
    app = Celery("beat-unit", set_as_current=False)
    app.conf.beat_schedule = {"app-entry": {"task": "app.entry", "schedule": 3600.0}}
    publisher = SimpleNamespace(poke=lambda *a, **k: None, activities=lambda *a, **k: None)
    options = SimpleNamespace(recovery_interval_s=interval_s, recovery_threshold=10_000)
    bind_runtime(app, SimpleNamespace(store=store, publisher=publisher, options=options, provider="FakeProvider"))
    return app


class CountingScheduler(beat.Scheduler):
    """A third-party scheduler stand-in: counts its ticks, asks to be ticked again in an hour."""

    ticks = 0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.ticks += 1
        return 3600.0


def test_mixin_keeps_the_base_schedule_and_ticks_it_only_when_it_asked() -> None:
    from duroxide_celery.beat import DurableTimers, TimerScheduler

    class Composed(DurableTimers, CountingScheduler):
        pass

    store = FakeStore()
    scheduler = Composed(app=fake_app(store))
    assert set(scheduler.schedule) >= {"app-entry"}  # the app's entry, and no entry of ours
    assert not any("duroxide" in name for name in scheduler.schedule)
    for _ in range(5):
        assert scheduler.tick() <= DurableTimers.max_timer_sleep
    assert scheduler.ticks == 1  # not polled at the timer rate: its next tick is due in an hour
    assert store.sweeps == [0]  # the first sweep takes everything pending; the next one is an interval away

    assert issubclass(TimerScheduler, beat.PersistentScheduler)


def test_mixin_sweeps_every_interval_with_the_threshold_after_the_first() -> None:
    from duroxide_celery.beat import DurableTimers

    class Composed(DurableTimers, CountingScheduler):
        pass

    store = FakeStore()
    scheduler = Composed(app=fake_app(store, interval_s=0.0))
    scheduler.tick()
    scheduler.tick()
    scheduler.tick()
    assert store.sweeps == [0, 10_000, 10_000]


def test_mixin_logs_store_errors_and_retries_without_stopping_the_base(caplog: pytest.LogCaptureFixture) -> None:
    from duroxide_celery.beat import DurableTimers

    class Composed(DurableTimers, CountingScheduler):
        store_retry_s = 0.0  # retry at every tick, to see the second failure's log

    store = FakeStore()
    scheduler = Composed(app=fake_app(store))
    store.fail = True
    with caplog.at_level(logging.WARNING, logger="duroxide_celery.beat"):
        scheduler.tick()
        scheduler.tick()
        store.fail = False
        scheduler.tick()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("durable timers / recovery sweep failed; retrying")
    assert caplog.records[0].exc_info is not None  # the first failure with its traceback
    assert "failed again (2 in a row): database is down" in messages[1]
    assert "work again after 2 failures" in messages[2]
    assert store.sweeps == [0]  # the failed first sweep was retried, with the same threshold
    assert scheduler.ticks == 1


def test_mixin_needs_a_runtime_on_the_app() -> None:
    from duroxide_celery.beat import TimerScheduler

    with pytest.raises(RuntimeError, match=r"Runtime\(provider, options, app=app\)"):
        TimerScheduler(app=Celery("no-runtime", set_as_current=False), lazy=True)


def test_mixin_must_come_before_the_scheduler_class() -> None:
    from duroxide_celery.beat import DurableTimers

    with pytest.raises(TypeError, match="put DurableTimers before the scheduler class"):

        class Wrong(CountingScheduler, DurableTimers):  # noqa: F841 - its definition is the test
            pass


@pytest.mark.parametrize(
    ("module", "missing", "package"),
    [
        ("duroxide_celery.beat.django", "django_celery_beat", "django-celery-beat"),
        ("duroxide_celery.beat.redbeat", "redbeat", "celery-redbeat"),
    ],
)
def test_combination_without_its_package_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, missing: str, package: str
) -> None:
    for name in [m for m in sys.modules if m == module or m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import of it fails as if it were not installed
    with pytest.raises(ImportError, match=f"pip install {package}"):
        importlib.import_module(module)


def test_a_beat_without_durable_timers_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    from duroxide_celery.beat import TimerScheduler, warn_without_durable_timers

    app = fake_app(FakeStore())
    plain = SimpleNamespace(app=app, scheduler=beat.PersistentScheduler(app=app, lazy=True))
    ours = SimpleNamespace(app=app, scheduler=TimerScheduler(app=app, lazy=True))
    no_runtime = SimpleNamespace(app=Celery("plain", set_as_current=False), scheduler=plain.scheduler)
    with caplog.at_level(logging.WARNING, logger="duroxide_celery.beat"):
        warn_without_durable_timers(sender=ours)
        warn_without_durable_timers(sender=no_runtime)
        assert not caplog.records
        warn_without_durable_timers(sender=plain)
    (record,) = caplog.records
    assert "celery.beat.PersistentScheduler, which has no durable timers" in record.getMessage()
    assert "--scheduler duroxide_celery.beat:TimerScheduler" in record.getMessage()
