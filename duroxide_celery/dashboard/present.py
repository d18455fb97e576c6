"""What the dashboard's pages show, computed from the store's records: payloads decoded once (or hidden), history
rows, and the timeline's bars. Pure functions (no Flask, no SQL), so they are tested without a server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..providers.waits import open_work
from ..replay import events as ev
from ..replay.events import HistoryEvent
from ..replay.rewind import REWOUND_PLACEHOLDER, effective_history

#: Event fields that hold user data (shared with the Django admin); everything else is always shown.
PAYLOAD_FIELDS = ev.PAYLOAD_FIELDS
#: History rows an instance page shows (the timeline draws up to MAX_BARS of them); the rest is summarized.
MAX_HISTORY_ROWS = 2000

#: Fields stored as JSON text inside the event (decoded once for display, never shown as an escaped string).
_JSON_TEXT_FIELDS = frozenset({"input", "result", "output", "data"})


@dataclass(frozen=True)
class Shown:
    """A value as a page shows it: `text` (pretty JSON or plain text), or hidden with its size."""

    hidden: bool
    text: str
    size: int

    @property
    def short(self) -> str:
        """One line, for a table cell's summary."""
        if self.hidden:
            return f"hidden ({self.size} bytes)"
        line = " ".join(self.text.split())
        return line if len(line) <= 80 else line[:77] + "..."


def show_json_text(text: str | None, show: bool) -> Shown | None:
    """A stored JSON text: decoded once and pretty-printed, or hidden. None stays None."""
    if text is None:
        return None
    if not show:
        return Shown(True, "", len(text.encode("utf-8", "surrogatepass")))
    try:
        value = json.loads(text)
    except ValueError:
        return Shown(False, text, len(text))  # not JSON (an old or foreign row): shown as stored
    return Shown(False, json.dumps(value, indent=2, ensure_ascii=False), len(text))


def show_value(value: Any, show: bool) -> Shown | None:
    """A decoded value (an error's details, a reason, a custom status): pretty JSON or text, or hidden."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    if not show:
        return Shown(True, "", len(text.encode("utf-8", "surrogatepass")))
    return Shown(False, text, len(text))


def fmt_ms(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def history_rows(events: list[HistoryEvent], show: bool) -> list[dict[str, Any]]:
    """One row per event: its id, kind, source, time, the fields anyone may see, and the payload fields (decoded
    once, or hidden)."""
    rows = []
    for event in events:
        plain, payloads = {}, {}
        for key, value in event.data.items():
            if value is None or key.startswith("_"):
                continue
            if key in _JSON_TEXT_FIELDS and isinstance(value, str):
                payloads[key] = show_json_text(value, show)
            elif key in PAYLOAD_FIELDS:
                payloads[key] = show_value(value, show)
            else:
                plain[key] = value
        failed = event.kind in (ev.ORCHESTRATION_FAILED, ev.ACTIVITY_FAILED, ev.SUB_ORCHESTRATION_FAILED)
        if failed and isinstance(event.data.get("details"), dict):
            # The category and kind of a failure are the engine's words, not user data.
            details = event.data["details"]
            plain.update({k: details[k] for k in ("category", "kind") if details.get(k)})
        rows.append(
            {
                "event_id": event.event_id,
                "kind": event.kind,
                "source_event_id": event.source_event_id,
                "time": fmt_ms(event.timestamp_ms),
                "plain": plain,
                "payloads": payloads,
                "failed": failed,
            }
        )
    return rows


# -- timeline -----------------------------------------------------------------------------------------------------
TIMELINE_WIDTH = 1000
LABEL_WIDTH = 260
ROW_HEIGHT = 20
MAX_BARS = 300

_ENDS = {
    ev.ACTIVITY_COMPLETED: "ok",
    ev.ACTIVITY_FAILED: "failed",
    ev.ACTIVITY_CANCEL_REQUESTED: "cancelled",
    ev.TIMER_FIRED: "ok",
    ev.SUB_ORCHESTRATION_COMPLETED: "ok",
    ev.SUB_ORCHESTRATION_FAILED: "failed",
    ev.SUB_ORCHESTRATION_CANCEL_REQUESTED: "cancelled",
}


def timeline(events: list[HistoryEvent], now_ms: int, running: bool) -> dict[str, Any]:
    """Bars over time for the execution: the orchestration itself, then each activity, timer, sub-orchestration,
    event wait and dequeue from its scheduling event to its outcome (pending ones, timers too, run to now; a
    timer's label says when it fires). States: ok, failed, cancelled, pending. Positions are in SVG units of
    TIMELINE_WIDTH."""
    if not events:
        return {"bars": [], "height": 0, "width": TIMELINE_WIDTH, "label_width": LABEL_WIDTH, "ticks": [], "more": 0}
    # As replay sees it: a step rewound after its failure shows how it ran again (the table keeps the failure).
    events = [e for e in effective_history(events) if e.kind != REWOUND_PLACEHOLDER]
    outcome: dict[int, HistoryEvent] = {}
    for event in events:
        if event.kind in _ENDS and event.source_event_id is not None:
            outcome.setdefault(event.source_event_id, event)
    matched = open_work(events).matched
    start = events[0].timestamp_ms
    last = events[-1]
    bars: list[dict[str, Any]] = []
    terminal = last.kind in ev.TERMINAL_KINDS
    end = last.timestamp_ms if terminal else now_ms
    orchestration_state = (
        "failed" if last.kind == ev.ORCHESTRATION_FAILED else ("ok" if terminal else "pending" if running else "ok")
    )
    bars.append(_bar("orchestration", "orchestration", start, end, orchestration_state))
    for event in events:
        name = event.data.get("name", "")
        if event.kind == ev.ACTIVITY_SCHEDULED and not name.startswith(ev.SYSCALL_PREFIX):
            kind, label = "activity", f"activity {name} #{event.event_id}"
        elif event.kind == ev.TIMER_CREATED:
            kind, label = "timer", f"timer #{event.event_id}"
        elif event.kind == ev.SUB_ORCHESTRATION_SCHEDULED:
            kind, label = "child", f"child {name} ({event.data.get('instance', '')})"
        elif event.kind == ev.EXTERNAL_SUBSCRIBED:
            kind, label = "wait", f"wait event '{name}'"
        elif event.kind == ev.QUEUE_SUBSCRIBED and not event.data.get("try"):
            kind, label = "wait", f"dequeue '{name}'"
        else:
            continue
        if kind == "wait":
            if event.event_id in matched:
                arrival = matched[event.event_id]
                state, stop = ("cancelled", None) if arrival is None else ("ok", arrival.timestamp_ms)
                if stop is None:
                    cancel = next(
                        (e for e in events if e.source_event_id == event.event_id and e.event_id > event.event_id),
                        None,
                    )
                    stop = cancel.timestamp_ms if cancel else event.timestamp_ms
            else:
                state, stop = ("pending", end) if not terminal else ("cancelled", end)
        elif event.event_id in outcome:
            done = outcome[event.event_id]
            state, stop = _ENDS[done.kind], done.timestamp_ms
        elif kind == "timer" and not terminal:
            # Drawn up to now like any pending bar (a timer hours away would squash the rest); the title says when.
            state, stop = "pending", end
            label += f" (fires {fmt_ms(int(event.data.get('fire_at_ms') or 0))[11:19]} UTC)"
        else:
            state, stop = ("pending", end) if not terminal else ("cancelled", end)
        bars.append(_bar(kind, label, event.timestamp_ms, stop, state, event.event_id))
    more = max(len(bars) - MAX_BARS, 0)
    bars = bars[:MAX_BARS]
    stop_all = max(b["end"] for b in bars)
    span = max(stop_all - start, 1)
    scale = (TIMELINE_WIDTH - LABEL_WIDTH - 10) / span
    for i, bar in enumerate(bars):
        bar["x"] = LABEL_WIDTH + (bar["start"] - start) * scale
        bar["w"] = max((bar["end"] - bar["start"]) * scale, 3)
        bar["y"] = 24 + i * ROW_HEIGHT
        bar["title"] = f"{bar['label']}: {bar['state']}, {fmt_ms(bar['start'])} to {fmt_ms(bar['end'])}"
    ticks = [
        {"x": LABEL_WIDTH + f * (TIMELINE_WIDTH - LABEL_WIDTH - 10), "label": _offset(int(span * f))}
        for f in (0, 0.25, 0.5, 0.75, 1)
    ]
    return {
        "bars": bars,
        "height": 24 + len(bars) * ROW_HEIGHT + 6,
        "width": TIMELINE_WIDTH,
        "label_width": LABEL_WIDTH,
        "ticks": ticks,
        "more": more,
    }


def _bar(kind: str, label: str, start: int, end: int, state: str, event_id: int | None = None) -> dict[str, Any]:
    return {"kind": kind, "label": label, "start": start, "end": max(end, start), "state": state, "event_id": event_id}


def _offset(ms: int) -> str:
    if ms < 1000:
        return f"+{ms} ms"
    if ms < 120_000:
        return f"+{ms / 1000:.1f} s"
    if ms < 7_200_000:
        return f"+{ms / 60_000:.1f} min"
    return f"+{ms / 3_600_000:.1f} h"
