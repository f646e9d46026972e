"""What benchmarks/helm_speed.py reads back from an evaluation's folder."""

from __future__ import annotations

import json

from benchmarks.helm_speed import server_startup


def test_the_server_startup_is_the_latest_servers(tmp_path):
    """A mode run twice in one invocation shares its folder, and server.log is appended to."""
    log = tmp_path / "server.log"
    lines = [json.dumps({"status": "ready", "startup": {"load_s": s, "warm_up_s": 0.5}}) for s in (3.2, 1.7)]
    log.write_text("loading\n" + lines[0] + "\nstopping\nloading\n" + lines[1] + "\n")
    assert server_startup(log) == {"load_s": 1.7, "warm_up_s": 0.5}
    assert server_startup(tmp_path / "missing.log") is None
