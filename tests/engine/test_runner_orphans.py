"""A worker killed from outside must not leave the engine's child processes running."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux-only")
def test_children_die_with_the_process_that_started_them(tmp_path):
    # A stand-in for a worker: it starts a "model server" through the runner, prints its pid, waits.
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from evaluation.engine.runner import ServerProcess
        server = ServerProcess([sys.executable, "-c", "import time; time.sleep(300)"], 0, Path({str(tmp_path)!r}) / "s.log", env=None)
        server.start()
        print(server.process.pid, flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        else:
            os.kill(child_pid, signal.SIGKILL)
            pytest.fail("the child outlived the process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()
