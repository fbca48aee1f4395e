"""Fuzz every registered payload codec with arbitrary bytes: what a device could publish.

    python tests/fuzz/fuzz_codecs.py [corpus dirs or input files] [-runs=N] [-max_total_time=S]

Every input goes through each codec's decode, and back through its encode where that is
defined to round-trip (`tests.fuzz.invariants`); a broken invariant is a crash, which the fuzzer
reports with the input that caused it.
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `tests`

with atheris.instrument_imports(include=["gateway", "bridges"]):
    from bridges.codecs import _registry

from tests.fuzz.invariants import check_decode, check_round_trip

CODECS = list(_registry.values())


def test_one_input(data: bytes) -> None:
    for codec in CODECS:
        check_round_trip(codec, check_decode(codec, data), data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
