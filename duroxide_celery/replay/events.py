"""History events and inbox messages: the vocabulary the replay engine reads and writes.

Event kinds keep duroxide's names (semantics.md 2.3) so histories read the same on both systems.
Payloads (`input`, `result`, `output`, `data`) are JSON text, exactly as stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .limits import MAX_JSON_DEPTH

#: Version of the replay behaviour, recorded on each execution (OrchestrationStarted and the execution row) so a
#: later engine knows which rules an old history was written under.
REPLAY_VERSION = 1

# Orchestration lifecycle
ORCHESTRATION_STARTED = "OrchestrationStarted"
ORCHESTRATION_COMPLETED = "OrchestrationCompleted"
ORCHESTRATION_FAILED = "OrchestrationFailed"
ORCHESTRATION_CONTINUED_AS_NEW = "OrchestrationContinuedAsNew"
ORCHESTRATION_CANCEL_REQUESTED = "OrchestrationCancelRequested"
#: Client.rewind's audit record: the events it lists are set aside by replay (replay/rewind.py), never deleted.
ORCHESTRATION_REWOUND = "OrchestrationRewound"
# Activities
ACTIVITY_SCHEDULED = "ActivityScheduled"
ACTIVITY_COMPLETED = "ActivityCompleted"
ACTIVITY_FAILED = "ActivityFailed"
ACTIVITY_CANCEL_REQUESTED = "ActivityCancelRequested"
# Timers
TIMER_CREATED = "TimerCreated"
TIMER_FIRED = "TimerFired"
# Positional external events
EXTERNAL_SUBSCRIBED = "ExternalSubscribed"
EXTERNAL_EVENT = "ExternalEvent"
EXTERNAL_SUBSCRIBED_CANCELLED = "ExternalSubscribedCancelled"
# FIFO event queues
QUEUE_SUBSCRIBED = "QueueSubscribed"
QUEUE_EVENT_DELIVERED = "QueueEventDelivered"
QUEUE_SUBSCRIPTION_CANCELLED = "QueueSubscriptionCancelled"
# Orchestration composition
ORCHESTRATION_CHAINED = "OrchestrationChained"
SUB_ORCHESTRATION_SCHEDULED = "SubOrchestrationScheduled"
SUB_ORCHESTRATION_COMPLETED = "SubOrchestrationCompleted"
SUB_ORCHESTRATION_FAILED = "SubOrchestrationFailed"
SUB_ORCHESTRATION_CANCEL_REQUESTED = "SubOrchestrationCancelRequested"
# Fire-and-forget state
CUSTOM_STATUS_UPDATED = "CustomStatusUpdated"
KEY_VALUE_SET = "KeyValueSet"
KEY_VALUE_CLEARED = "KeyValueCleared"
KEY_VALUES_CLEARED = "KeyValuesCleared"

TERMINAL_KINDS = frozenset({ORCHESTRATION_COMPLETED, ORCHESTRATION_FAILED, ORCHESTRATION_CONTINUED_AS_NEW})

#: Records for people, not for replay: no replay rule reads them (a rewind's effect is replay/rewind.py's view).
AUDIT_KINDS = frozenset({ORCHESTRATION_REWOUND})

#: Events the orchestration code itself produces; replay matches them, in order, against what the code emits.
ACTION_KINDS = frozenset(
    {
        ACTIVITY_SCHEDULED,
        ACTIVITY_CANCEL_REQUESTED,
        TIMER_CREATED,
        EXTERNAL_SUBSCRIBED,
        EXTERNAL_SUBSCRIBED_CANCELLED,
        QUEUE_SUBSCRIBED,
        QUEUE_SUBSCRIPTION_CANCELLED,
        ORCHESTRATION_CHAINED,
        SUB_ORCHESTRATION_SCHEDULED,
        SUB_ORCHESTRATION_CANCEL_REQUESTED,
        CUSTOM_STATUS_UPDATED,
        KEY_VALUE_SET,
        KEY_VALUE_CLEARED,
        KEY_VALUES_CLEARED,
    }
)

#: Events that arrive from outside (completions, raised events); replay feeds them to the code in order.
INPUT_KINDS = frozenset(
    {
        ACTIVITY_COMPLETED,
        ACTIVITY_FAILED,
        TIMER_FIRED,
        EXTERNAL_EVENT,
        QUEUE_EVENT_DELIVERED,
        SUB_ORCHESTRATION_COMPLETED,
        SUB_ORCHESTRATION_FAILED,
        ORCHESTRATION_CANCEL_REQUESTED,
    }
)

#: Event data fields that hold user data (JSON text, or text a user wrote): hidden from whoever may not see
#: payloads (the dashboard, the Django admin). Everything else (names, ids, tags, times, versions) is what the code
#: declared and is always shown; so is a failure's `category` and `kind` inside its `details`.
PAYLOAD_FIELDS = frozenset(
    {"input", "result", "output", "data", "details", "value", "status", "reason", "carry_forward_events"}
)

#: Deterministic helpers are recorded as a scheduled+completed pair within one turn, named as duroxide names them.
SYSCALL_PREFIX = "__duroxide_syscall:"
SYSCALL_UTC_NOW = SYSCALL_PREFIX + "utc_now_ms"
SYSCALL_NEW_GUID = SYSCALL_PREFIX + "new_guid"

# Inbox (orchestrator queue) message kinds, as duroxide names its work items.
MSG_START = "StartOrchestration"
MSG_CONTINUE_AS_NEW = "ContinueAsNew"
MSG_ACTIVITY_COMPLETED = "ActivityCompleted"
MSG_ACTIVITY_FAILED = "ActivityFailed"
MSG_TIMER_FIRED = "TimerFired"
MSG_EXTERNAL_RAISED = "ExternalRaised"
MSG_QUEUE_MESSAGE = "QueueMessage"
MSG_SUB_COMPLETED = "SubOrchCompleted"
MSG_SUB_FAILED = "SubOrchFailed"
MSG_CANCEL = "CancelInstance"
#: Wakes a rewound instance so its next turn replays at once; it carries no event (ingestion drops it).
MSG_REWOUND = "Rewound"

# Error categories (semantics.md 2.19)
APPLICATION = "Application"
INFRASTRUCTURE = "Infrastructure"
CONFIGURATION = "Configuration"
POISON = "Poison"


@dataclass
class HistoryEvent:
    """One persisted history event; `data` holds the kind-specific fields."""

    event_id: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    source_event_id: int | None = None
    timestamp_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "source_event_id": self.source_event_id,
            "timestamp_ms": self.timestamp_ms,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> HistoryEvent:
        return cls(
            event_id=obj["event_id"],
            kind=obj["kind"],
            data=obj.get("data") or {},
            source_event_id=obj.get("source_event_id"),
            timestamp_ms=obj.get("timestamp_ms", 0),
        )


def error_details(category: str, message: str, kind: str | None = None) -> dict[str, Any]:
    """The stored shape of a failure; `message` is the display text users see."""
    details: dict[str, Any] = {"category": category, "message": message}
    if kind:
        details["kind"] = kind
    return details


def _check_json_shape(value: Any) -> None:
    """Refuse what json.dumps would encode lossily or decode badly: non-str object keys (1 and "1", None and
    "null" would collide), and nesting deeper than MAX_JSON_DEPTH. Called after json.dumps succeeded, so the value
    is acyclic and the walk costs no more than the encoding did."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise TypeError(f"nested deeper than {MAX_JSON_DEPTH} levels (the limit for JSON payloads)")
        if isinstance(obj, dict):
            for key, item in obj.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"dict key {key!r} is of type {type(key).__name__}; JSON object keys must be str "
                        "(a non-str key would be converted and could collide with a str key)"
                    )
                if isinstance(item, dict | list | tuple):
                    stack.append((item, depth + 1))
        else:
            for item in obj:
                if isinstance(item, dict | list | tuple):
                    stack.append((item, depth + 1))


#: The JSON encoder class for user values (None: the standard one). A process-wide choice, set once at start-up
#: (e.g. Django's DjangoJSONEncoder by the Django integration) so every process of a deployment encodes alike.
_encoder: type[json.JSONEncoder] | None = None


def set_json_encoder(encoder: type[json.JSONEncoder] | None) -> None:
    """Encode user values with `encoder` (a json.JSONEncoder subclass whose `default` turns extra types, such as
    Decimal or datetime, into JSON types); None restores the standard encoder. Values come back as JSON types."""
    global _encoder
    if encoder is not None and not (isinstance(encoder, type) and issubclass(encoder, json.JSONEncoder)):
        raise TypeError(f"a JSON encoder must be a json.JSONEncoder subclass, got {encoder!r}")
    _encoder = encoder


def dumps(value: Any) -> str:
    """Encode a user value as compact JSON; raises TypeError naming the offending type, key or depth.

    Every payload the engine stores goes through here (Client inputs and event data, activity inputs and
    results, orchestration inputs and outputs, continue-as-new input), so all share one set of rules: JSON types
    only, no NaN or infinity, str object keys only, at most MAX_JSON_DEPTH levels. NUL characters inside strings
    are fine (encoded as \\u0000)."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, cls=_encoder)
    except RecursionError:
        raise TypeError(
            f"value is not JSON-serializable: nested deeper than {MAX_JSON_DEPTH} levels (the limit for JSON payloads)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(f"value is not JSON-serializable: {exc}") from None
    if isinstance(value, dict | list | tuple):
        try:
            _check_json_shape(value)
        except TypeError as exc:
            raise TypeError(f"value is not JSON-serializable: {exc}") from None
    return text


def loads(text: str | None) -> Any:
    """Decode stored JSON text; None stays None, text that is not JSON comes back as the raw string."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
