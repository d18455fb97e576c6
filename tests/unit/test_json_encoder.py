"""set_json_encoder: one process-wide encoder for user values (the Django integration installs DjangoJSONEncoder)."""

from __future__ import annotations

import decimal
import json
from collections.abc import Iterator
from typing import Any

import pytest

from duroxide_celery.replay.events import dumps, loads, set_json_encoder


class DecimalAsText(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, decimal.Decimal):
            return str(o)
        return super().default(o)


@pytest.fixture
def decimal_encoder() -> Iterator[None]:
    set_json_encoder(DecimalAsText)
    yield
    set_json_encoder(None)


def test_without_an_encoder_extra_types_are_refused() -> None:
    with pytest.raises(TypeError, match="Decimal is not JSON serializable"):
        dumps({"price": decimal.Decimal("1.5")})


def test_an_encoder_turns_extra_types_into_json_types(decimal_encoder: None) -> None:
    assert loads(dumps({"price": decimal.Decimal("1.5")})) == {"price": "1.5"}
    with pytest.raises(TypeError, match="dict key 1"):
        dumps({1: "still refused"})  # the key rules stay


def test_only_json_encoder_classes_are_accepted() -> None:
    with pytest.raises(TypeError, match="json.JSONEncoder subclass"):
        set_json_encoder(str)  # type: ignore[arg-type]
