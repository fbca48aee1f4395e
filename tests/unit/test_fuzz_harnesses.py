"""The fuzz harnesses run: each keeps its invariants over its seeds and a few thousand inputs.

Each run works on a copy of the seed corpus, so the inputs the fuzzer finds stay out of the
repository (``make fuzz`` keeps them, under var/fuzz/).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris installs from a wheel on Linux x86-64 only")

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
HARNESSES = ["frames", "codecs"]


def run_harness(harness: str, workdir: Path, *args: str) -> tuple[int, str]:
    """The harness's exit status and its output (the fuzzer's and Python's, interleaved)."""
    command = [sys.executable, str(FUZZ / f"fuzz_{harness}.py"), *args]
    result = subprocess.run(  # crash files go to workdir, not the current directory
        [*command, f"-artifact_prefix={workdir}/"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout


@pytest.mark.parametrize("harness", HARNESSES)
def test_a_harness_fuzzes_from_its_seeds_without_a_crash(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / harness, corpus)
    seeds = len(list(corpus.iterdir()))
    status, output = run_harness(harness, tmp_path, str(corpus), "-runs=3000", "-max_total_time=20")
    assert status == 0, output[-3000:]
    assert f"INFO: seed corpus: files: {seeds} " in output
    assert "DONE" in output
