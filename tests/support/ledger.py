"""The fault scenarios' ledger: what each promise's scenario sent, lost, repeated, and how long
the system took to recover. ``make chaos`` prints it as a table at the end of the run."""

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# How much longer and harder the fault scenarios run: 1 in `make test`, 5 in `make chaos`.
SCALE = max(1, int(os.environ.get("CHAOS_SCALE", "1")))


@dataclass(frozen=True)
class Row:
    promise: str
    scenario: str
    sent: int
    lost: int
    duplicated: int
    recovery_seconds: float | None


class Ledger:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def record(
        self,
        promise: str,
        scenario: str,
        sent: int,
        received: Iterable[Counter[int]],
        recovery_seconds: float | None = None,
    ) -> Row:
        """One row; ``received`` is each receiver's count per message number ``0..sent-1``."""
        lost = duplicated = 0
        for seen in received:
            lost += sum(1 for n in range(sent) if n not in seen)
            duplicated += sum(c - 1 for c in seen.values() if c > 1)
        row = Row(promise, scenario, sent, lost, duplicated, recovery_seconds)
        self.rows.append(row)
        return row

    def table(self) -> str:
        head = "| promise | scenario | sent | lost | duplicated | recovery |"
        lines = [head, "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            recovery = "-" if r.recovery_seconds is None else f"{r.recovery_seconds:.1f} s"
            cells = [r.promise, r.scenario, r.sent, r.lost, r.duplicated, recovery]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(lines)
