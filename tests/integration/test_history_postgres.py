"""The history writer on PostgreSQL: a row the database refuses costs that row, not its batch.

jsonb refuses the escape of U+0000. The edges refuse such messages before they reach a room
(see tests/e2e/test_postgres.py), so the envelope here is built by hand, as a path that missed
the check would build it. The writer runs in ``manage.py shell`` with the gateway's settings on
a migrated PostgreSQL database; the test reads the rows back with psycopg.
"""

import json

import psycopg
import pytest

from tests.support.processes import Postgres, gateway_env, manage, migrated

ROOM = "refused"  # the room WRITE_A_BATCH writes to

# Three envelopes appended to a window whose counter is seeded: numbered at once, they are
# pending together when `History.flush` takes them, so they go to the database as one batch.
WRITE_A_BATCH = r"""
import asyncio
import json
from datetime import timedelta

from gateway import metrics
from gateway.history import History, LocalWindow


def envelope(n, message):
    return {
        "id": f"row-{n}",
        "room": "refused",
        "ts": "2026-01-01T00:00:00.000Z",
        "source": "ws",
        "sender": "tester",
        "topic": None,
        "message": message,
        "gateway": "tests",
    }


async def main():
    window = LocalWindow(window=100)
    history = History(window, max_messages=1000, max_age=timedelta(days=1))
    await window.seed("refused", 0)
    batch = [envelope(1, "first"), envelope(2, "a \x00 inside"), envelope(3, "third")]
    await history.append(batch)
    before = len(history._pending)
    await history.flush()
    after = len(history._pending)
    await history.close()  # stops the writer, and writes what would still be pending
    print(json.dumps({
        "pending_before_flush": before,
        "pending_after_flush": after,
        "pending_after_close": len(history._pending),
        "refused_by_database": metrics.get("history_rows_lost", "refused_by_database"),
        "write_failures": metrics.get("history_write_failures"),
        "window": [m["seq"] for m in await window.after("refused", 0, 10)],
    }))


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def postgres_url(postgres_server: Postgres) -> str:
    """A migrated PostgreSQL database of this module's own."""
    return migrated(postgres_server.create_database("gateway_history"))


def test_a_row_postgresql_refuses_is_counted_and_the_rest_of_its_batch_is_written(
    postgres_url: str,
) -> None:
    result = manage(
        "shell", "--no-imports", "-c", WRITE_A_BATCH, env=gateway_env(DATABASE_URL=postgres_url)
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "pending_before_flush": 3,  # one batch of three
        "pending_after_flush": 0,
        "pending_after_close": 0,
        "refused_by_database": 1,
        "write_failures": 0,
        "window": [1, 2, 3],  # the recent window keeps all three
    }
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT seq, envelope -> 'message' FROM gateway_message WHERE room = %s ORDER BY seq",
            [ROOM],
        ).fetchall()
    assert rows == [(1, "first"), (3, "third")]
    logged = result.stderr
    assert f"history row not written (kept in the recent window): room {ROOM} seq 2" in logged
    assert "unsupported Unicode escape sequence" in logged  # PostgreSQL's words: jsonb refused
