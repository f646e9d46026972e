"""The demo's SQLite file is shared by the web server and two workers: concurrent writers must wait
for each other, never fail with "database is locked" (seen in `make demo`: a validation retried 30 s
later because two transactions that had both read tried to write)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Two threads, each in a transaction that reads, pauses, then writes: the way a task reads a row
# and then updates it. In SQLite's default (deferred) mode the second writer fails at once.
SCRIPT = """
import threading, time
import django
django.setup()
from django.db import connection, connections, transaction

with connection.cursor() as c:
    c.execute("CREATE TABLE IF NOT EXISTS t (n integer)")
errors = []

def work():
    try:
        with transaction.atomic():
            with connection.cursor() as c:
                c.execute("SELECT count(*) FROM t")
                time.sleep(0.3)
                c.execute("INSERT INTO t VALUES (1)")
    except Exception as e:
        errors.append(repr(e))
    finally:
        connections.close_all()

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
with connection.cursor() as c:
    c.execute("SELECT count(*) FROM t")
    print("rows", c.fetchone()[0], "errors", errors)
"""


def test_concurrent_read_then_write_transactions_on_sqlite_wait_instead_of_failing(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rows 4 errors []" in result.stdout, result.stdout + result.stderr[-2000:]
