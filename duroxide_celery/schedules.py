"""Durable schedules, the pure part: a schedule's spec (validated), its ticks (cron in a time zone, or a fixed
interval), deterministic jitter and instance ids, and what one round of the timer loop does with a schedule
(`plan_round`, `plan_trigger`). No database and no Celery here: `providers/schedules.py` stores the rows and
applies the plans, `tasks/recovery.py` runs the rounds.

Rules (README "Schedules"):

- A tick is a nominal UTC fire time. Cron ticks follow croniter in the schedule's IANA time zone. DST: a local
  time skipped by a spring-forward runs once, at the first instant after the jump (croniter's, and Vixie cron's,
  rule); a local time repeated by a fall-back runs once (its first occurrence) when the cron's minute and hour are
  fixed (`30 1 * * *`), and at both instants when either is a wildcard or a step (`*/30 * * * *`, `0 * * * *`),
  which are real-time periods. Interval ticks are `anchor + k * every_ms`, the anchor being `start_at` (or the
  Unix epoch), so every beat computes the same ticks.
- A tick falls due at its nominal time plus a jitter in [0, jitter_ms], a hash of (schedule id, tick): every
  process computes the same one.
- The instance a tick starts is `<schedule_id>@<tick, UTC ISO-8601>`, e.g. `nightly@2026-12-02T14:00:00Z`
  (milliseconds appear only when the tick has some); creating it is idempotent, so a tick starts one instance.
- A tick due more than catchup_window_ms ago (counted from its jittered due time) was missed: it is skipped and
  recorded as skipped (a run of them as one record with a count). Of the ticks due inside the window, allow_all
  starts each one in order; the other policies act on the latest one only, the earlier ones being recorded as
  skipped (superseded).
- Overlap, when the schedule's previous run is still Running: skip records the tick as skipped; buffer_one keeps
  one tick waiting (later ones are skipped) and starts it once the previous run has ended; allow_all starts
  regardless; cancel_previous cancels the running one and starts the new one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from .replay.limits import (
    MAX_DELAY_MS,
    MAX_INSTANCE_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_VERSION_CHARS,
    check_delay_ms,
    check_length,
    check_storable,
)

OVERLAP_POLICIES: tuple[str, ...] = ("skip", "buffer_one", "allow_all", "cancel_previous")
#: Temporal's default: after downtime, ticks up to a year old still count (per the overlap policy, usually only
#: the latest one runs).
DEFAULT_CATCHUP_WINDOW_MS = 365 * 24 * 3600 * 1000
#: Below this, a tick the timer loop reaches a little late (it polls; the database may be slow) would be skipped.
MIN_CATCHUP_WINDOW_MS = 1000
#: Each tick starts an instance; a shorter period would mostly measure the timer loop's cadence.
MIN_EVERY_MS = 1000
#: `<schedule_id>@<tick>` must be a valid instance id: the tick's text takes at most 25 characters.
INSTANCE_SUFFIX_CHARS = len("@2026-12-02T14:00:00.000Z")
MAX_SCHEDULE_ID_CHARS = MAX_INSTANCE_ID_CHARS - INSTANCE_SUFFIX_CHARS
MAX_CRON_CHARS = 256
MAX_TIMEZONE_CHARS = 64
#: At most this many instances started for one schedule in one round (allow_all catching up continues in the next).
MAX_STARTS_PER_ROUND = 100
#: Skipped cron ticks are counted one by one up to here; beyond, the record says "at least" this many.
MAX_COUNTED_TICKS = 1000
#: While a tick is buffered behind a running instance, the timer loop looks at the schedule this often (ms).
BUFFER_RECHECK_MS = 1000
#: Fire times get_schedule shows.
NEXT_FIRE_TIMES = 5

#: What a run record says happened to a tick.
STARTED, TRIGGERED, SKIPPED, BUFFERED = "started", "triggered", "skipped", "buffered"

_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
#: The fields update_schedule may change (create_schedule's, less the id and paused).
UPDATABLE_FIELDS = (
    "orchestration",
    "input",
    "cron",
    "every_ms",
    "timezone",
    "overlap",
    "catchup_window_ms",
    "jitter_ms",
    "start_at",
    "end_at",
    "version",
)
#: The fields that change which ticks a schedule has (changing one re-plans the next tick from now).
CADENCE_FIELDS = frozenset({"cron", "every_ms", "timezone", "jitter_ms", "start_at", "end_at"})


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated schedule definition (`make_spec` builds it). Times are epoch milliseconds (UTC); `input` is
    the JSON text the orchestration receives."""

    schedule_id: str
    orchestration: str
    input: str
    cron: str | None
    every_ms: int | None
    timezone: str
    overlap: str
    catchup_window_ms: int
    jitter_ms: int
    start_at: int | None
    end_at: int | None
    version: str | None


# -- validation ------------------------------------------------------------------------------------------------
def check_schedule_id(value: Any) -> str:
    """Schedule ids follow the instance-id rules, short enough that `<id>@<tick>` is a valid instance id."""
    if not isinstance(value, str):
        raise TypeError(f"schedule id must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("schedule id must not be empty")
    if "::sub::" in value:
        raise ValueError(f"schedule id {value!r} contains the reserved sub-orchestration marker '::sub::'")
    check_storable(value, "schedule id")
    return check_length(value, "schedule id", MAX_SCHEDULE_ID_CHARS)


def _check_cron(expr: Any) -> str:
    if not isinstance(expr, str):
        raise TypeError(f"cron must be a str, got {type(expr).__name__}")
    text = " ".join(expr.split())
    check_storable(text, "cron")
    check_length(text, "cron", MAX_CRON_CHARS)
    if text.startswith("@"):
        if text.lower() not in _CRON_ALIASES:
            raise ValueError(f"cron {expr!r}: unknown alias; use one of {', '.join(_CRON_ALIASES)}")
        text = text.lower()
    elif len(text.split(" ")) != 5:
        raise ValueError(
            f"cron {expr!r} must have 5 fields (minute hour day-of-month month day-of-week), "
            f"or be one of {', '.join(_CRON_ALIASES)}"
        )
    try:
        croniter(text)
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cron {expr!r} is not a valid cron expression: {exc}") from None
    return text


def _check_timezone(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"timezone must be a str (an IANA name such as 'Europe/Paris'), got {type(name).__name__}")
    if not name or len(name) > MAX_TIMEZONE_CHARS or "\x00" in name:
        raise ValueError(f"timezone {name!r} is not an IANA time zone name such as 'Europe/Paris'")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (an IANA name such as 'America/New_York'): {exc}") from None
    return name


def to_epoch_ms(value: Any, what: str) -> int | None:
    """A point in time given as a timezone-aware datetime or epoch milliseconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} must be timezone-aware (e.g. datetime(..., tzinfo=UTC)), got {value!r}")
        return math.floor(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a timezone-aware datetime or epoch milliseconds, got {type(value).__name__}")
    if not 0 <= value <= MAX_DELAY_MS * 2:
        raise ValueError(f"{what} must be epoch milliseconds between 1970 and 2169, got {value}")
    return value


def make_spec(
    schedule_id: Any,
    orchestration: Any,
    input: str,
    *,
    cron: Any = None,
    every_ms: Any = None,
    timezone: Any = "UTC",
    overlap: Any = "skip",
    catchup_window_ms: Any = DEFAULT_CATCHUP_WINDOW_MS,
    jitter_ms: Any = 0,
    start_at: Any = None,
    end_at: Any = None,
    version: Any = None,
) -> ScheduleSpec:
    """Check every field (TypeError/ValueError naming the bad one) and return the spec. `input` is already
    encoded JSON (the Client encodes and size-checks it)."""
    schedule_id = check_schedule_id(schedule_id)
    if not isinstance(orchestration, str) or not orchestration.strip():
        raise ValueError(f"orchestration name must be a non-empty string, got {orchestration!r}")
    check_storable(orchestration, "orchestration name")
    check_length(orchestration, "orchestration name", MAX_NAME_CHARS)
    if version is not None:
        if not isinstance(version, str) or not version.strip():
            raise ValueError(f"version must be a non-empty string or None, got {version!r}")
        check_storable(version, "version")
        check_length(version, "version", MAX_VERSION_CHARS)
    if (cron is None) == (every_ms is None):
        raise ValueError("give exactly one of cron= and every_ms=")
    if cron is not None:
        cron = _check_cron(cron)
    else:
        every_ms = check_delay_ms(every_ms, "every_ms", minimum=MIN_EVERY_MS)
    timezone = _check_timezone(timezone)
    if every_ms is not None and timezone != "UTC":
        raise ValueError("timezone applies to cron schedules; an every_ms schedule counts real time (leave it UTC)")
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, got {overlap!r}")
    catchup_window_ms = check_delay_ms(catchup_window_ms, "catchup_window_ms", minimum=MIN_CATCHUP_WINDOW_MS)
    jitter_ms = check_delay_ms(jitter_ms, "jitter_ms")
    if every_ms is not None and jitter_ms >= every_ms:
        raise ValueError(f"jitter_ms ({jitter_ms}) must be less than every_ms ({every_ms})")
    start = to_epoch_ms(start_at, "start_at")
    end = to_epoch_ms(end_at, "end_at")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end_at ({format_tick(end)}) must be after start_at ({format_tick(start)})")
    spec = ScheduleSpec(
        schedule_id, orchestration, input, cron, every_ms, timezone, overlap, catchup_window_ms, jitter_ms, start, end,
        version,
    )  # fmt: skip
    if cron is not None and Cadence(spec).after((start or 0) - 1) is None:
        if end is None:
            raise ValueError(f"cron {cron!r} never fires (no date matches it)")
        raise ValueError(f"cron {cron!r} has no tick between start_at and end_at ({format_tick(end)})")
    return spec


def spec_fields(spec: ScheduleSpec) -> dict[str, Any]:
    """The spec as make_spec's keyword arguments (to apply an update's changes and check the result again)."""
    return {name: getattr(spec, name) for name in UPDATABLE_FIELDS}


# -- ticks -----------------------------------------------------------------------------------------------------
def format_tick(ms: int) -> str:
    """A tick as UTC ISO-8601 with a Z: seconds, plus milliseconds when it has some."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def instance_id_for(schedule_id: str, tick_ms: int) -> str:
    """The deterministic instance id of a schedule's tick (every beat computes the same)."""
    return f"{schedule_id}@{format_tick(tick_ms)}"


def jitter_for(schedule_id: str, tick_ms: int, jitter_ms: int) -> int:
    """A delay in [0, jitter_ms] from a hash of (schedule id, tick): the same in every process."""
    if jitter_ms <= 0:
        return 0
    digest = hashlib.sha256(f"{schedule_id}@{tick_ms}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (jitter_ms + 1)


def _ms(moment: datetime) -> int:
    return math.floor(moment.timestamp() * 1000)


class Cadence:
    """The nominal ticks of a spec, bounded by its start_at and end_at (both inclusive)."""

    def __init__(self, spec: ScheduleSpec):
        self.spec = spec
        self._zone = ZoneInfo(spec.timezone)
        self._fixed_time = False
        if spec.cron is not None:
            minute, hour = croniter(spec.cron).expressions[:2]
            # Vixie cron's rule: a job whose minute and hour are both fixed runs once in a repeated hour.
            self._fixed_time = not str(minute).startswith("*") and not str(hour).startswith("*")

    def due(self, tick: int) -> int:
        """When the tick falls due: its nominal time plus its jitter."""
        return tick + jitter_for(self.spec.schedule_id, tick, self.spec.jitter_ms)

    def after(self, t: int) -> int | None:
        """The first tick strictly after t (epoch ms), or None when there is none before end_at."""
        spec = self.spec
        if spec.start_at is not None and t < spec.start_at:
            t = spec.start_at - 1
        tick: int | None
        if spec.every_ms is not None:
            anchor = spec.start_at or 0
            tick = anchor + ((t - anchor) // spec.every_ms + 1) * spec.every_ms
        else:
            tick = self._cron_after(t)
        if tick is None or (spec.end_at is not None and tick > spec.end_at):
            return None
        return tick

    def before(self, t: int) -> int | None:
        """The last tick strictly before t, or None when there is none at or after start_at."""
        spec = self.spec
        if spec.end_at is not None and t > spec.end_at:
            t = spec.end_at + 1
        tick: int | None
        if spec.every_ms is not None:
            anchor = spec.start_at or 0
            tick = anchor + ((t - 1 - anchor) // spec.every_ms) * spec.every_ms
        else:
            tick = self._cron_before(t)
        if tick is None or (spec.start_at is not None and tick < spec.start_at) or tick < 0:
            return None
        return tick

    def upcoming(self, t: int, count: int) -> list[int]:
        """Up to `count` ticks from t on (t itself included when it is a tick)."""
        found: list[int] = []
        tick = self.after(t - 1)
        while tick is not None and len(found) < count:
            found.append(tick)
            tick = self.after(tick)
        return found

    def count(self, first: int, last: int) -> tuple[int, bool]:
        """How many ticks lie in [first, last], and whether that is exact (cron ticks are counted one by one, up to
        MAX_COUNTED_TICKS)."""
        if last < first:
            return 0, True
        if self.spec.every_ms is not None:
            lo, hi = self.after(first - 1), self.before(last + 1)
            if lo is None or hi is None or hi < lo:
                return 0, True
            return (hi - lo) // self.spec.every_ms + 1, True
        n = 0
        for tick in self._cron_ticks(first - 1):
            if tick > last or (self.spec.end_at is not None and tick > self.spec.end_at):
                break
            n += 1
            if n >= MAX_COUNTED_TICKS:
                return n, False
        return n, True

    # croniter works in seconds on aware datetimes in the zone; a 5-field cron never fires between whole minutes.
    def _cron_ticks(self, t: int, forward: bool = True) -> Iterator[int]:
        """The cron's ticks strictly after t (or strictly before it), in order, less fall-back repeats."""
        assert self.spec.cron is not None  # only cron cadences get here
        seconds = t // 1000 if forward else -(-t // 1000)  # croniter's next and prev are strict at whole seconds
        it = croniter(self.spec.cron, datetime.fromtimestamp(seconds, tz=UTC).astimezone(self._zone))
        step = it.get_next if forward else it.get_prev
        try:
            while True:
                tick = _ms(step(datetime))
                if (tick > t if forward else tick < t) and not self._repeated(tick):
                    yield tick
        except CroniterError:  # croniter searched far and found no matching date
            return

    def _cron_after(self, t: int) -> int | None:
        return next(self._cron_ticks(t), None)

    def _cron_before(self, t: int) -> int | None:
        return next(self._cron_ticks(t, forward=False), None)

    def _repeated(self, tick: int) -> bool:
        """Whether the tick is the second occurrence of a local time repeated by a fall-back, for a fixed-time cron
        (which then runs once: at the first occurrence)."""
        if not self._fixed_time:
            return False
        local = datetime.fromtimestamp(tick / 1000, tz=UTC).astimezone(self._zone)
        if not local.fold:
            return False
        first = local.replace(fold=0)
        return first.utcoffset() != local.utcoffset()


def next_fire_times(spec: ScheduleSpec, next_tick: int | None, count: int = NEXT_FIRE_TIMES) -> list[int]:
    """The next `count` nominal ticks from the schedule's next one."""
    if next_tick is None:
        return []
    return Cadence(spec).upcoming(next_tick, count)


# -- rounds ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One run record: what happened to the tick `fire_at` (with `count`, to a run of `count` ticks from it)."""

    fire_at: int
    action: str
    count: int = 1
    detail: str | None = None


@dataclass
class Plan:
    """What a round does to a schedule: the records to write, the ticks whose instances to start (in order),
    whether to cancel the previous run first, and the schedule's new state."""

    steps: list[Step] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    cancel_previous: bool = False
    next_fire_at: int | None = None
    buffered_fire_at: int | None = None
    due_at: int | None = None

    def record(self, step: Step) -> None:
        self.steps.append(step)
        if step.action in (STARTED, TRIGGERED):
            self.starts.append(step.fire_at)


def _ticks_text(count: int, exact: bool) -> str:
    if not exact:
        return f"at least {count} ticks"
    return "1 tick" if count == 1 else f"{count} ticks"


def _on_overlap(plan: Plan, spec: ScheduleSpec, tick: int, running: str | None, action: str) -> bool:
    """Apply the overlap policy to a tick that may start now; returns whether an instance is (then) running."""
    if running is None or spec.overlap == "allow_all":
        plan.record(Step(tick, action))
        return True
    if spec.overlap == "skip":
        plan.record(Step(tick, SKIPPED, detail=f"previous run {running} still running (overlap=skip)"))
    elif spec.overlap == "buffer_one":
        if plan.buffered_fire_at is None:
            plan.buffered_fire_at = tick
            plan.record(Step(tick, BUFFERED, detail=f"waits for previous run {running} (overlap=buffer_one)"))
        else:
            detail = f"previous run {running} still running and tick {format_tick(plan.buffered_fire_at)} buffered"
            plan.record(Step(tick, SKIPPED, detail=detail + " (overlap=buffer_one)"))
    else:  # cancel_previous
        plan.cancel_previous = True
        plan.record(Step(tick, action, detail=f"cancelled previous run {running} (overlap=cancel_previous)"))
    return True


def _due_at(cadence: Cadence, plan: Plan, now: int) -> int | None:
    candidates = [] if plan.next_fire_at is None else [cadence.due(plan.next_fire_at)]
    if plan.buffered_fire_at is not None:
        candidates.append(now + BUFFER_RECHECK_MS)
    return min(candidates, default=None)


def plan_round(
    spec: ScheduleSpec, next_fire_at: int | None, buffered_fire_at: int | None, running: str | None, now: int
) -> Plan:
    """One timer-loop round for a schedule at `now` (epoch ms): `running` is the instance id of its previous run
    while that is still Running, else None. Starts a buffered tick whose predecessor ended, then handles the ticks
    due by now: missed ones (older than the catch-up window) skipped, the rest per the overlap policy."""
    cadence = Cadence(spec)
    plan = Plan(buffered_fire_at=buffered_fire_at)
    if buffered_fire_at is not None and running is None:
        plan.buffered_fire_at = None
        plan.record(Step(buffered_fire_at, STARTED, detail="buffered tick, started after the previous run ended"))
        running = instance_id_for(spec.schedule_id, buffered_fire_at)
    tick = next_fire_at
    if tick is not None and cadence.due(tick) <= now:
        tick = _skip_missed(cadence, plan, tick, now)
        if spec.overlap == "allow_all":
            while tick is not None and cadence.due(tick) <= now and len(plan.starts) < MAX_STARTS_PER_ROUND:
                plan.record(Step(tick, STARTED))
                tick = cadence.after(tick)
        elif tick is not None and cadence.due(tick) <= now:
            latest = _latest_due(cadence, tick, now)
            count, exact = cadence.count(tick, latest - 1)
            if count:
                detail = f"superseded by the later tick {format_tick(latest)} (overlap={spec.overlap})"
                plan.record(Step(tick, SKIPPED, count, f"{_ticks_text(count, exact)} {detail}"))
            _on_overlap(plan, spec, latest, running, STARTED)
            tick = cadence.after(latest)
    plan.next_fire_at = tick
    plan.due_at = _due_at(cadence, plan, now)
    return plan


def _skip_missed(cadence: Cadence, plan: Plan, first: int, now: int) -> int | None:
    """Record the ticks due before the catch-up window as one skipped record; returns the first tick after them."""
    tick: int | None = first
    window_start = now - cadence.spec.catchup_window_ms
    if cadence.due(first) >= window_start:
        return first
    count, exact = 0, True
    # Every tick before this one falls due before the window whatever its jitter: jump over them arithmetically.
    jump_to = window_start - cadence.spec.jitter_ms
    if first < jump_to:
        last = cadence.before(jump_to)
        if last is not None and last >= first:
            count, exact = cadence.count(first, last)
            tick = cadence.after(last)
    while tick is not None and cadence.due(tick) < window_start:
        count += 1
        tick = cadence.after(tick)
    detail = f"{_ticks_text(count, exact)} missed: due more than catchup_window_ms={cadence.spec.catchup_window_ms} ago"
    plan.record(Step(first, SKIPPED, count, detail))
    return tick


def _latest_due(cadence: Cadence, first: int, now: int) -> int:
    """The last tick from `first` on that is due by now (`first` is)."""
    candidate = cadence.before(now + 1)
    while candidate is not None and candidate > first and cadence.due(candidate) > now:
        candidate = cadence.before(candidate)
    return first if candidate is None or candidate < first else candidate


def plan_trigger(
    spec: ScheduleSpec,
    next_fire_at: int | None,
    buffered_fire_at: int | None,
    running: str | None,
    now: int,
    overlap: str | None = None,
) -> Plan:
    """`trigger_schedule`: a tick at `now`, outside the cadence (the next tick stays as it was), under the
    schedule's overlap policy or the one given."""
    policy = overlap or spec.overlap
    plan = Plan(buffered_fire_at=buffered_fire_at, next_fire_at=next_fire_at)
    _on_overlap(plan, _with_overlap(spec, policy), now, running, TRIGGERED)
    return plan


def _with_overlap(spec: ScheduleSpec, overlap: str) -> ScheduleSpec:
    return spec if overlap == spec.overlap else replace(spec, overlap=overlap)


def ticks_between(spec: ScheduleSpec, after: int, until: int) -> Iterator[int]:
    """The ticks in (after, until] (tests and tools)."""
    cadence = Cadence(spec)
    tick = cadence.after(after)
    while tick is not None and tick <= until:
        yield tick
        tick = cadence.after(tick)


__all__ = [
    "DEFAULT_CATCHUP_WINDOW_MS",
    "OVERLAP_POLICIES",
    "Cadence",
    "Plan",
    "ScheduleSpec",
    "Step",
    "format_tick",
    "instance_id_for",
    "jitter_for",
    "make_spec",
    "plan_round",
    "plan_trigger",
]
