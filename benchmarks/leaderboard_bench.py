"""Leaderboard latency against a trivial Django view, both served by the same gunicorn in one run.

    DATABASE_URL=postgres://…/bench python manage.py seed_scale --teams 1000 --per-team 10
    DATABASE_URL=postgres://…/bench python benchmarks/leaderboard_bench.py --requests 400 --concurrency 4

Requests to every URL are interleaved (round robin) over `concurrency` keep-alive client threads, so
all URLs see the same server load. Prints p50/p95/p99 per URL, the ratio of each p95 to the trivial
view's, and the number of scored submissions and teams per track it ran against.
"""

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def wait_for(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/bench/trivial/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("gunicorn did not start")


def worker(port: int, jobs: list[str], results: dict[str, list[float]], errors: list[str], lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for url in jobs:
        start = time.perf_counter()
        conn.request("GET", url, headers={"Host": "127.0.0.1"})
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        with lock:
            if response.status != 200:
                errors.append(f"{url}: {response.status}")
            results[url].append(elapsed)


def dataset() -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.bench_settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db.models import Count

    from evaluation.models import Submission

    rows = (
        Submission.objects.filter(status="scored")
        .values("track__slug")
        .annotate(n=Count("id"), teams=Count("team", distinct=True))
        .order_by("track__slug")
    )
    return ", ".join(f"{r['track__slug']}: {r['n']} scored submissions from {r['teams']} teams" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", default="4090")
    parser.add_argument("--requests", type=int, default=400, help="Requests per URL.")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--warmup", type=int, default=20, help="Unmeasured requests per URL first.")
    parser.add_argument("--cold", action="store_true", help="No cache: every answer rendered from the database.")
    args = parser.parse_args()

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.bench_settings", "DEBUG": "0"}
    env["LEADERBOARD_BENCH_COLD"] = "1" if args.cold else "0"
    print("Data:", dataset())
    urls = [
        "/bench/trivial/",
        f"/leaderboard/{args.track}/",
        f"/leaderboard/{args.track}/standings.json",
        f"/leaderboard/{args.track}/?sort=-eval_gpu_seconds&page=7",
        f"/leaderboard/{args.track}/pareto.json",
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{args.port}",
         "--workers", str(args.workers), "--access-logfile", "/dev/null", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        wait_for(args.port)
        for _ in range(args.warmup):
            for url in urls:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
                conn.request("GET", url)
                conn.getresponse().read()
        jobs = [url for _ in range(args.requests) for url in urls]
        results: dict[str, list[float]] = {url: [] for url in urls}
        errors: list[str] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(target=worker, args=(args.port, jobs[i :: args.concurrency], results, errors, lock))
            for i in range(args.concurrency)
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    base = percentile(results[urls[0]], 95)
    print(
        f"{len(jobs)} requests in {wall:.1f}s, concurrency {args.concurrency}, gunicorn workers {args.workers}"
        f"{', no cache (cold)' if args.cold else ''}"
    )
    print(f"{'URL':58} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p95/trivial':>12}")
    for url in urls:
        values = results[url]
        p95 = percentile(values, 95)
        print(
            f"{url:58} {statistics.median(values) * 1000:8.1f} {p95 * 1000:8.1f} "
            f"{percentile(values, 99) * 1000:8.1f} {p95 / base:12.2f}"
        )


if __name__ == "__main__":
    main()
