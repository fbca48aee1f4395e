"""Fuzz `read_frame` and `parse_json` with arbitrary text: what a browser could send.

    python tests/fuzz/fuzz_frames.py [corpus dirs or input files] [-runs=N] [-max_total_time=S]

Every input is checked against `tests.fuzz.invariants`; a broken invariant is a crash, which
the fuzzer reports with the input that caused it.
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `tests`

with atheris.instrument_imports(include=["gateway", "protocols"]):
    from gateway.jsonutil import dumps
    from protocols.frames import read_frame

from tests.fuzz.invariants import check_frame, check_parse_json

DEFAULT_LIMIT = 64 * 1024  # the gateway's default frame limit


def test_one_input(data: bytes) -> None:
    check_parse_json(data)  # bytes: what the history reads back from Redis
    # A socket delivers valid UTF-8 only; replacing the rest keeps every input useful.
    text = data.decode("utf-8", "replace")
    size = len(text.encode("utf-8"))
    for limit in (DEFAULT_LIMIT, size, size - 1):
        if limit >= 1:
            check_frame(text, limit)
    value = check_parse_json(text)
    if value is not None:
        # Any JSON value comes back intact as a frame's message.
        wrapped = {"message": value}
        assert read_frame(dumps(wrapped), 16 * 1024 * 1024) == wrapped


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
