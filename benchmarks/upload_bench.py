"""Upload benchmark: a large file through the tus endpoint of a real gunicorn process.

Measures, in one run:
- peak resident memory of the gunicorn worker that handles the upload (target: at most 150 MiB);
- upload throughput against a plain local copy of the same bytes on the same disk (target: at least 50 %);
- a resume after the connection is cut half-way: the bytes sent twice (target: at most one chunk).

    python benchmarks/upload_bench.py --size-gib 2 --chunk-mib 64

Everything lives in a temporary folder (SQLite database, media, broker) that is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RssSampler(threading.Thread):
    """Samples the resident memory of gunicorn's master and workers every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.master = psutil.Process(pid)
        self.peak: dict[int, int] = {}
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                for proc in [self.master, *self.master.children(recursive=True)]:
                    rss = proc.memory_info().rss
                    self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
            except Exception:
                pass
            time.sleep(0.05)

    def worker_peak(self) -> int:
        workers = {pid: rss for pid, rss in self.peak.items() if pid != self.master.pid}
        return max(workers.values()) if workers else 0


def make_file(path: Path, size: int) -> None:
    piece = 64 * MIB
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(piece, left)
            fh.write(os.urandom(n))
            left -= n


def setup_django(env: dict[str, str]):
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.utils import timezone

    from evaluation.models import BaseModel
    from portal.models import Challenge, Membership, Team, Track

    now = timezone.now()
    user = get_user_model().objects.create_user("bench", "bench@example.org", "bench-password")
    challenge = Challenge.objects.create(
        name="Bench", slug="bench", starts_at=now - timedelta(days=2), submissions_open_at=now - timedelta(days=1),
        submission_deadline=now + timedelta(days=1), winners_notified_at=now + timedelta(days=2),
        presentation_at=now + timedelta(days=3), daily_submission_quota=10,
    )  # fmt: skip
    track = Track.objects.create(
        challenge=challenge, slug="a100", name="A100", gpu_model="A100", gpu_memory_gb=80, max_upload_bytes=64 * 1024**3
    )
    team = Team.objects.create(challenge=challenge, name="Bench team", slug="bench-team", captain=user)
    Membership.objects.create(team=team, user=user, challenge=challenge)
    BaseModel.objects.create(name="bench-base", architecture="LlamaForCausalLM", parameter_count=1, licence="mit")
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    return session.session_key, track


def timed_copy(src: Path, dst: Path) -> float:
    """The baseline: a plain copy of the same bytes on the same disk (`cp`), with one fsync like the server's."""
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def cut_patch(url: str, headers: dict[str, str], offset: int, body_len: int, send: bytes) -> None:
    """Announce `body_len` bytes, send only `send`, then drop the connection."""
    parts = urlparse(url)
    lines = [f"PATCH {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Tus-Resumable: 1.0.0",
             "Content-Type: application/offset+octet-stream", f"Upload-Offset: {offset}",
             f"Content-Length: {body_len}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + send)
    time.sleep(1.0)  # let the server notice the cut and record what it received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--chunk-mib", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="copy-then-upload rounds; the page cache makes a single copy's speed vary several-fold on a VM",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    size, chunk = int(args.size_gib * 1024**3), args.chunk_mib * MIB

    work = Path(tempfile.mkdtemp(prefix="upload-bench-", dir=os.environ.get("BENCH_TMP")))
    env = {
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "PORTAL_VAR_DIR": str(work / "var"),
        "MEDIA_ROOT": str(work / "media"),
        "SECRET_KEY": "bench",
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
    session_key, track = setup_django(env)
    from tusclient import client as tus_client

    payload = work / "payload.bin"
    print(f"writing {size / 1024**3:.2f} GiB of random bytes…", flush=True)
    make_file(payload, size)
    expected = hashlib.sha256()
    with open(payload, "rb") as fh:
        while piece := fh.read(64 * MIB):
            expected.update(piece)

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "portal.wsgi", "-w", "1", "-b", f"127.0.0.1:{port}", "--timeout", "900"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=open(work / "gunicorn.log", "w"),
    )  # fmt: skip
    sampler = RssSampler(server.pid)
    try:
        endpoint = f"http://127.0.0.1:{port}/api/v1/uploads/"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        headers = {"Cookie": f"sessionid={session_key}; csrftoken={'b' * 32}", "X-CSRFToken": "b" * 32}
        metadata = {
            "track": track.slug,
            "base_model": "bench-base",
            "datasets": "bench",
            "finetune_gpu_hours": "1",
            "recipe_url": "https://example.org/r",
        }
        client = tus_client.TusClient(endpoint, headers=headers)
        # Warm the worker (imports) before measuring memory, as a long-running server would be.
        warm = work / "warm.bin"
        warm.write_bytes(os.urandom(1024))
        client.uploader(str(warm), chunk_size=chunk, metadata={**metadata, "filename": "warm"}).upload()
        sampler.start()
        time.sleep(0.3)
        idle_rss = sampler.worker_peak()

        rounds = []
        for n in range(args.rounds):
            copy_s = timed_copy(payload, work / "copy.bin")
            print(f"round {n + 1}: copy {size / MIB / copy_s:.0f} MiB/s; uploading through tus…", flush=True)
            start = time.perf_counter()
            uploader = client.uploader(str(payload), chunk_size=chunk, metadata={**metadata, "filename": f"r{n}.bin"})
            uploader.upload()
            rounds.append((copy_s, time.perf_counter() - start))
            print(f"round {n + 1}: tus {size / MIB / rounds[-1][1]:.0f} MiB/s", flush=True)

        from evaluation.models import Submission

        sub = Submission.objects.order_by("-id").first()
        assert sub.sha256 == expected.hexdigest(), "SHA-256 mismatch"

        print("resume after a cut half-way…", flush=True)
        sent = 0
        first = client.uploader(str(payload), chunk_size=chunk, metadata={**metadata, "filename": "resume.bin"})
        first.upload(stop_at=size // 2)
        sent += first.offset
        with open(payload, "rb") as fh:
            fh.seek(first.offset)
            partial = fh.read(chunk // 2)
        cut_patch(first.url, headers, first.offset, min(chunk, size - first.offset), partial)
        sent += len(partial)
        resumed = client.uploader(str(payload), url=first.url, chunk_size=chunk)
        resume_from = resumed.offset
        resumed.upload()
        sent += size - resume_from
        resent = sent - size
        sub = Submission.objects.order_by("-id").first()
        assert sub.sha256 == expected.hexdigest(), "SHA-256 mismatch after resume"
    finally:
        sampler.running = False
        server.terminate()
        server.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "size_bytes": size,
        "chunk_bytes": chunk,
        "server_worker_peak_rss_mib": round(sampler.worker_peak() / MIB, 1),
        "server_worker_idle_rss_mib": round(idle_rss / MIB, 1),
        "rounds": [
            {
                "local_copy_mib_s": round(size / MIB / c, 1),
                "tus_upload_mib_s": round(size / MIB / u, 1),
                "ratio": round(c / u, 3),
            }
            for c, u in rounds
        ],
        # Each round's upload is compared with the copy made just before it, in the same cache state.
        "throughput_ratio": round(statistics.median(c / u for c, u in rounds), 3),
        "resume_server_had_bytes_of_cut_chunk": resume_from - first.offset,
        "resume_resent_bytes": resent,
        "machine": f"{platform.node()} · {platform.machine()} · {os.cpu_count()} CPUs · Python {platform.python_version()}",
    }
    result["pass"] = {
        "rss_le_150_mib": result["server_worker_peak_rss_mib"] <= 150,
        "throughput_ge_50_pct": result["throughput_ratio"] >= 0.5,
        "resent_le_one_chunk": resent <= chunk,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
