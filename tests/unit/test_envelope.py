"""Envelope stamps: the time as browsers read it, and ids that do not repeat."""

import re
import threading
from datetime import UTC, datetime, timedelta

from gateway.envelope import new_envelope, new_id, utc_timestamp

ISO_MILLISECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_the_timestamp_is_now_in_utc_with_milliseconds() -> None:
    before = datetime.now(UTC)
    stamps = [utc_timestamp() for _ in range(2000)]  # crosses into later milliseconds
    after = datetime.now(UTC)
    for stamp in stamps:
        assert ISO_MILLISECONDS.fullmatch(stamp), stamp
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z")
        assert before - timedelta(milliseconds=1) <= when <= after
    assert stamps == sorted(stamps)


def test_a_given_time_is_formatted_as_it_is() -> None:
    moment = datetime(2026, 11, 20, 23, 59, 0, 123_999, tzinfo=UTC)
    assert utc_timestamp(moment) == "2026-11-20T23:59:00.123Z"


def test_ids_are_128_random_bits_that_do_not_repeat_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_id() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for into in found for i in into]
    assert len(set(ids)) == len(ids) == 20_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_an_envelope_gets_a_fresh_id_unless_given_one() -> None:
    first, second = (
        new_envelope(room="r", message=1, source="ws", sender=None, gateway="g") for _ in range(2)
    )
    assert first["id"] != second["id"]
    given = new_envelope(
        room="r", message=1, source="mqtt", sender=None, gateway="g", message_id="abc"
    )
    assert given["id"] == "abc"
