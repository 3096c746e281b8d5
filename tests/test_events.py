"""The event validator on good and bad events."""

from __future__ import annotations

import pytest

from recsys.errors import ValidationError
from recsys.events import (
    EVENT_TYPES,
    MAX_FUTURE_SKEW_MS,
    MAX_ID_LENGTH,
    MAX_QUERY_LENGTH,
    Event,
    validate_event,
)

NOW_MS = 1_717_000_000_000  # 2024-05-29, a fixed clock for the future check
TS = NOW_MS - 60_000


def event(**fields):
    raw = {"session_id": "s1", "event_type": "click", "item_id": "i1", "ts": TS}
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not ...}


def invalid(raw, field: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate_event(raw, now_ms=NOW_MS)
    assert info.value.field == field
    return info.value


@pytest.mark.parametrize("event_type", [t for t in EVENT_TYPES if t != "search"])
def test_item_event_types_valid(event_type):
    result = validate_event(event(event_type=event_type), now_ms=NOW_MS)
    assert result == Event(session_id="s1", event_type=event_type, ts=TS, item_id="i1")


def test_search_event_valid():
    raw = event(event_type="search", item_id=..., query="  red shoes ")
    result = validate_event(raw, now_ms=NOW_MS)
    assert result.query == "red shoes"
    assert result.item_id is None


def test_all_fields_kept():
    raw = event(user_id="u1", event_id="e1")
    assert validate_event(raw, now_ms=NOW_MS).to_dict() == {
        "session_id": "s1",
        "event_type": "click",
        "ts": TS,
        "item_id": "i1",
        "user_id": "u1",
        "query": None,
        "event_id": "e1",
    }


def test_integer_ids_become_strings():
    result = validate_event(event(session_id=42, item_id=7, user_id=9), now_ms=NOW_MS)
    assert (result.session_id, result.item_id, result.user_id) == ("42", "7", "9")


def test_whole_float_ts_accepted():
    assert validate_event(event(ts=float(TS)), now_ms=NOW_MS).ts == TS


def test_not_a_mapping():
    invalid(["s1", "click"], "event")


def test_unknown_event_type_lists_valid():
    error = invalid(event(event_type="view"), "event_type")
    assert error.value == "view"
    for name in EVENT_TYPES:
        assert name in str(error)


def test_missing_item_id():
    invalid(event(item_id=...), "item_id")


def test_null_item_id():
    invalid(event(event_type="purchase", item_id=None), "item_id")


def test_item_on_search():
    error = invalid(event(event_type="search", query="shoes"), "item_id")
    assert "search" in error.expected


@pytest.mark.parametrize("query", [None, "", "   ", 5])
def test_search_without_query_text(query):
    invalid(event(event_type="search", item_id=..., query=query), "query")


def test_query_too_long():
    raw = event(event_type="search", item_id=..., query="a" * (MAX_QUERY_LENGTH + 1))
    error = invalid(raw, "query")
    assert str(MAX_QUERY_LENGTH) in error.expected


def test_query_on_click():
    error = invalid(event(query="shoes"), "query")
    assert "click" in error.expected


def test_ts_in_seconds_suggests_milliseconds():
    error = invalid(event(ts=TS // 1000), "ts")
    assert "seconds" in error.expected
    assert str(TS // 1000 * 1000) in error.expected
    assert "milliseconds" in str(error)


def test_ts_far_in_future():
    error = invalid(event(ts=NOW_MS + MAX_FUTURE_SKEW_MS + 1), "ts")
    assert str(NOW_MS) in error.expected


def test_ts_within_clock_skew():
    raw = event(ts=NOW_MS + MAX_FUTURE_SKEW_MS)
    assert validate_event(raw, now_ms=NOW_MS).ts == NOW_MS + MAX_FUTURE_SKEW_MS


def test_future_check_skipped_for_history():
    raw = event(ts=NOW_MS + 10 * MAX_FUTURE_SKEW_MS)
    assert validate_event(raw, now_ms=-1).ts == NOW_MS + 10 * MAX_FUTURE_SKEW_MS


@pytest.mark.parametrize("ts", ["1717000000000", None, True, 1.5e12 + 0.5, -5, 0])
def test_ts_invalid(ts):
    invalid(event(ts=ts), "ts")


def test_ts_missing():
    invalid(event(ts=...), "ts")


def test_unknown_field():
    error = invalid(event(price=9.99), "price")
    assert error.value == 9.99
    assert "session_id" in error.expected


@pytest.mark.parametrize("field", ["session_id", "item_id", "user_id", "event_id"])
def test_bool_ids_rejected(field):
    invalid(event(**{field: True}), field)


@pytest.mark.parametrize("field", ["session_id", "item_id", "user_id", "event_id"])
def test_too_long_ids_rejected(field):
    error = invalid(event(**{field: "x" * (MAX_ID_LENGTH + 1)}), field)
    assert str(MAX_ID_LENGTH) in error.expected
    # The message shows a prefix of the id, not all of it.
    assert len(str(error)) < 200


def test_longest_id_accepted():
    longest = "x" * MAX_ID_LENGTH
    assert validate_event(event(item_id=longest), now_ms=NOW_MS).item_id == longest


@pytest.mark.parametrize("value", ["", "  ", 1.5, ["s1"]])
def test_bad_session_id(value):
    invalid(event(session_id=value), "session_id")


def test_missing_session_id():
    invalid(event(session_id=...), "session_id")


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_ts_named_as_such(ts):
    error = invalid(event(ts=ts), "ts")
    assert error.value == str(ts)
    assert error.expected == "a finite number of milliseconds"


@pytest.mark.parametrize(
    "ts", [10**5000, -(10**5000), 2**63], ids=["5000-digits", "-5000-digits", "2**63"]
)
def test_huge_ts_rejected_without_printing_it(ts):
    error = invalid(event(ts=ts), "ts")
    assert error.value == "a number too large"


@pytest.mark.parametrize("field", ["session_id", "item_id", "user_id", "event_id"])
def test_huge_integer_ids_rejected_without_printing_them(field):
    # str() of an integer of over 4,300 digits raises a plain ValueError.
    error = invalid(event(**{field: 10**5000}), field)
    assert error.value == "an integer too large"
    assert error.expected == f"at most {MAX_ID_LENGTH} characters"


@pytest.mark.parametrize("field", ["session_id", "item_id", "user_id", "event_id"])
def test_lone_surrogates_in_ids_rejected(field):
    error = invalid(event(**{field: "ab\ud800"}), field)
    # The value shown is escaped, so it can be encoded in an error response.
    assert error.value == "ab\\ud800"
    assert error.expected == "valid Unicode text; character 3 is a lone surrogate"


def test_lone_surrogate_in_query_rejected():
    raw = event(event_type="search", item_id=..., query="\udc00 shoes")
    error = invalid(raw, "query")
    assert error.value == "\\udc00 shoes"


def test_non_ascii_ids_and_query_kept():
    raw = event(
        event_type="search", item_id=..., session_id="séance-日本", query=" 🙂 tv "
    )
    result = validate_event(raw, now_ms=NOW_MS)
    assert (result.session_id, result.query) == ("séance-日本", "🙂 tv")
