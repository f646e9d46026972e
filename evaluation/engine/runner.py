"""Run one evaluation: start the model server, point HELM's HTTP client at it, run `helm-run`,
collect every run's stats into a result document.

Nothing here imports Django. The only inputs are paths, a suite and a track budget; the output is a
`ResultDocument` (also written to `<out>/result.json`). Whole-job failures raise an `EngineError`
subclass (after writing a document with status "failed"); a single failed HELM run is reported in
the document while the other runs still count.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evaluation.engine import errors
from evaluation.engine.loading import context_length, tokenizer_folder
from evaluation.engine.nltk_data import nltk_data_dir
from evaluation.engine.result import Efficiency, Hardware, Record, ResultDocument, RunResult
from evaluation.engine.suites import Suite, SuiteEntry, entry_for_run, get_suite

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "challenge/submission"
LOG_TAIL_LINES = 60

ProgressCallback = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_socket() -> socket.socket:
    """A bound, listening socket for the model server to inherit (`--listen-fd`).

    HELM can then start at the same time as the server: its first requests wait in the backlog
    until the model is loaded, instead of being refused.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except FileNotFoundError:
        return ""


def _http_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode() or "{}")


def _load_failure(log_text: str) -> errors.EngineError | None:
    """The server reports a load failure as one JSON line `{"error": {type, kind, message}}`."""
    for line in reversed(log_text.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and '"error"' in line):
            continue
        try:
            info = json.loads(line)["error"]
        except (ValueError, KeyError, TypeError):
            continue
        cls = getattr(errors, str(info.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.EngineError)):
            cls = errors.UserError if info.get("kind") == "user" else errors.InfraError
        return cls(str(info.get("message", "model server failed")), log_tail=log_text)
    return None


@dataclass
class ServerProcess:
    """The model server in its own process bound to 127.0.0.1, with its log in a file."""

    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str] | None = None
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    stopped_at: float = 0.0
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.process = _spawn(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            pass_fds=self.pass_fds,
        )
        log.close()

    def adopt(self, standby: Standby) -> None:
        """Run the command in a standby that already imported what the server needs."""
        self.started_at = time.monotonic()
        standby.take_over(self.command, env=self.env, cwd=Path.cwd(), log=self.log_path)
        self.process = standby.process

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                text = tail(self.log_path)
                failure = _load_failure(text)
                if failure is not None:
                    raise failure
                raise errors.ServerCrashed(
                    f"the model server exited with code {self.process.returncode} before it became healthy",
                    log_tail=text,
                )
            try:
                self.health = _http_json(f"{self.base_url}/health", timeout=2.0)
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.25)
        raise errors.ServerUnhealthy(
            f"the model server did not become healthy within {timeout_s:.0f} s", log_tail=tail(self.log_path)
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stats(self) -> dict[str, Any]:
        try:
            return _http_json(f"{self.base_url}/stats")
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            _kill_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.stopped_at = time.monotonic()


def _spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """Every process of an evaluation: in its own process group (killed as one), dying with us."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the process that started us dies.

    A Celery worker killed from outside (OOM killer, SIGKILL) must not leave a model server holding
    the GPU or a helm-run writing results. Linux only; elsewhere a no-op. (The signal follows the
    thread that forked, so start these processes from the thread that waits for them.)
    """
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def server_command(
    model_dir: Path,
    port: int,
    track_memory_gb: float,
    adapter_base: Path | None,
    device: str,
    dtype: str,
    track_name: str | None = None,
    listen_fd: int | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "evaluation.engine.server", "--model", str(model_dir)]
    if adapter_base is not None:
        cmd += ["--adapter-base", str(adapter_base)]
    if track_name:
        cmd += ["--track-name", track_name]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--track-memory-gb", str(track_memory_gb)]
    if listen_fd is not None:
        cmd += ["--listen-fd", str(listen_fd)]
    return cmd + ["--device", device, "--dtype", dtype]


# ---------------------------------------------------------------------------------------- standbys
@dataclass
class Standby:
    """A started `python -m evaluation.engine.standby KIND` (imports done), not yet given its job."""

    kind: str
    process: subprocess.Popen
    listener: socket.socket | None = None  # the server's: bound and listening before the server exists
    told: bool = False
    ready_fd: int | None = None  # reads end-of-file once the standby's imports are done

    def wait_ready(self, timeout: float) -> bool:
        """Whether its imports are done, waiting up to `timeout` seconds for them."""
        if self.ready_fd is None:
            return True
        readable, _, _ = select.select([self.ready_fd], [], [], timeout)
        if not readable:
            return False
        os.close(self.ready_fd)
        self.ready_fd = None
        return True

    def take_over(self, command: list[str], *, env: dict[str, str] | None, cwd: Path, log: Path | None) -> None:
        """Make it run `command` (`[python, "-m", module, *argv]`) as a fresh process would."""
        order = {"module": command[2], "argv": command[3:], "env": env or dict(os.environ), "cwd": str(cwd)}
        order["log"] = str(log) if log else None
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(order) + "\n")
        self.process.stdin.flush()
        self.told = True

    def discard(self) -> None:
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        if self.process.stdin is not None:
            self.process.stdin.close()  # EOF: it exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(self.process, signal.SIGKILL)
            self.process.wait()
        if self.listener is not None:
            self.listener.close()


_standbys: list[Standby] = []


def helm_process_count(configured: int | None = None) -> int:
    """helm-run processes per evaluation: as configured, or (0/None) one per four CPU cores, at most four."""
    return configured or max(1, min(4, (os.cpu_count() or 1) // 4))


def standbys_beside_evaluation(helm_processes: int) -> bool:
    """Whether the next evaluation's standbys can start when this one begins: their imports (a core
    each for ~15 s) then overlap this evaluation instead of delaying a next one that follows at once,
    as it does on a GPU worker with a queue. Only with a core to spare for each process of both."""
    return (os.cpu_count() or 1) >= 2 * (helm_processes + 2)


def start_standbys(helm_processes: int = 1) -> None:
    """Have a standby model server and `helm_processes` standby helm-runs waiting.

    Call it from the thread that will run the next evaluation (the standbys die with it), between
    evaluations or, with cores to spare, as one begins (`standbys_beside_evaluation`): their imports
    take CPU, not GPU.
    """
    for standby in [s for s in _standbys if s.process.poll() is not None]:
        _standbys.remove(standby)
        standby.discard()
    env = helm_env("")
    for kind, wanted in (("server", 1), ("helm", helm_processes)):
        for _ in range(wanted - sum(s.kind == kind for s in _standbys)):
            listener = listening_socket() if kind == "server" else None
            ready_fd, ready_child = os.pipe()
            process = _spawn(
                [sys.executable, "-m", "evaluation.engine.standby", "--ready-fd", str(ready_child), kind],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if kind == "helm" else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if kind == "helm" else subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                env=env,
                cwd=REPO_ROOT,
                pass_fds=(ready_child, listener.fileno()) if listener else (ready_child,),
            )
            os.close(ready_child)
            _standbys.append(Standby(kind, process, listener, ready_fd=ready_fd))


def wait_standbys_ready(timeout: float) -> bool:
    """Wait until every waiting standby has done its imports (a worker that booted a while ago)."""
    deadline = time.monotonic() + timeout
    return all(s.wait_ready(max(0.0, deadline - time.monotonic())) for s in list(_standbys))


def take_standby(kind: str) -> Standby | None:
    """A waiting standby of this kind that is still alive, now the caller's; None if there is none."""
    while standby := next((s for s in _standbys if s.kind == kind), None):
        _standbys.remove(standby)
        if standby.process.poll() is None:
            return standby
        standby.discard()
    return None


def discard_standbys() -> None:
    while _standbys:
        _standbys.pop().discard()


# ---------------------------------------------------------------------------------------- prod_env
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised
        return value.get("content")
    return value if isinstance(value, str) else None


def model_facts(model_dir: Path, adapter_base: Path | None) -> dict[str, Any]:
    """Special tokens, context length and tokenizer folder, read from the model's files (no weights).

    The context length is the one the server will report, so HELM can start before the server is up.
    """
    folders = [model_dir] + ([adapter_base] if adapter_base else [])
    tok: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for folder in folders:
        tok = tok or {**_read_json(folder / "special_tokens_map.json"), **_read_json(folder / "tokenizer_config.json")}
        config = config or _read_json(folder / "config.json")
    eos = _token_text(tok.get("eos_token")) or "</s>"
    bos = _token_text(tok.get("bos_token")) or eos
    max_len = context_length(config)
    if max_len is None:
        model_max = tok.get("model_max_length")
        max_len = model_max if isinstance(model_max, int) and 0 < model_max < 1_000_000 else 2048
    # None (HELM then asks the server) when there are no tokenizer files, e.g. behind a stand-in server.
    tokenizer_dir = tokenizer_folder(model_dir, adapter_base)
    return {
        "eos_token": eos,
        "bos_token": bos,
        "max_sequence_length": int(max_len),
        "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir else None,
    }


def write_prod_env(prod_env: Path, base_url: str, facts: dict[str, Any]) -> Path:
    """A per-job HELM config dir: the deployment `challenge/submission` served over HTTP by our server."""
    prod_env.mkdir(parents=True, exist_ok=True)
    max_len = facts["max_sequence_length"]
    deployments = {
        "model_deployments": [
            {
                "name": DEPLOYMENT,
                "model_name": DEPLOYMENT,
                "tokenizer_name": DEPLOYMENT,
                "max_sequence_length": max_len,
                "client_spec": {
                    "class_name": "helm.clients.http_model_client.HTTPModelClient",
                    "args": {"base_url": base_url, "timeout": 3000},
                },
            }
        ]
    }
    # HELM tokenizes every prompt (context-window checks) and every completion (metrics). In its own
    # process, with the submission's tokenizer files, as stock HELM does for local models, that costs
    # no HTTP round trip and does not wait for the model server to load.
    tokenizer_spec = (
        {
            "class_name": "helm.tokenizers.huggingface_tokenizer.HuggingFaceTokenizer",
            "args": {"pretrained_model_name_or_path": facts["tokenizer_dir"], "trust_remote_code": False},
        }
        if facts.get("tokenizer_dir")
        else {"class_name": "helm.tokenizers.http_model_tokenizer.HTTPModelTokenizer", "args": {"base_url": base_url}}
    )
    tokenizers = {
        "tokenizer_configs": [
            {
                "name": DEPLOYMENT,
                "tokenizer_spec": tokenizer_spec,
                "end_of_text_token": facts["eos_token"],
                "prefix_token": facts["bos_token"],
            }
        ]
    }
    metadata = {
        "models": [
            {
                "name": DEPLOYMENT,
                "display_name": "Challenge submission",
                "description": "The submission under evaluation, served by the challenge engine",
                "creator_organization_name": "Challenge",
                "access": "open",
                "tags": ["TEXT_MODEL_TAG", "FULL_FUNCTIONALITY_TEXT_MODEL_TAG"],
            }
        ]
    }
    # JSON is valid YAML, and needs no YAML writer here.
    (prod_env / "model_deployments.yaml").write_text(json.dumps(deployments, indent=2))
    (prod_env / "tokenizer_configs.yaml").write_text(json.dumps(tokenizers, indent=2))
    (prod_env / "model_metadata.yaml").write_text(json.dumps(metadata, indent=2))
    return prod_env


def write_conf(path: Path, entries: Sequence[SuiteEntry], max_eval_instances: int | None) -> Path:
    """A HELM run-entries conf. Per-entry counts go through HELM's `max_eval_instances` expander."""
    lines = []
    for entry in entries:
        description = entry.description
        n = entry.instances
        if max_eval_instances is not None:
            n = min(n, max_eval_instances) if n is not None else max_eval_instances
        if n is not None:
            description += f"{',' if ':' in description else ':'}max_eval_instances={n}"
        lines.append(f"  {{description: {json.dumps(description)}, priority: 1}}")
    path.write_text("entries: [\n" + ",\n".join(lines) + "\n]\n")
    return path


# ---------------------------------------------------------------------------------------- progress
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+)\s(?P<rest>.*)$")
_RUNS_TOTAL = re.compile(r"(\d+) entries produced (\d+) run specs")
_RUN_START = re.compile(r"^Running (?P<name>\S+) \{$")
_RUN_ERROR = re.compile(r"^Error when running (?P<name>\S+):")
_EVAL_INSTANCES = re.compile(r"(\d+)/(\d+) eval instances")
_REQUESTS = re.compile(r"^(\d+) requests$")
_PROCESSED = re.compile(r"^Processed (\d+) requests$")
_CLOSE = re.compile(r"^\} \[(?P<seconds>[\d.]+)(?P<unit>m?s)\]")


@dataclass
class RunTrace:
    name: str
    status: str = "running"
    error: str | None = None
    wall_seconds: float | None = None
    eval_instances: int | None = None
    requests: int | None = None


@dataclass
class HelmProgress:
    """Follows helm-run's hierarchical log and reports progress through a callback."""

    on_progress: ProgressCallback | None = None
    hidden: bool = False
    runs_total: int | None = None
    runs: dict[str, RunTrace] = field(default_factory=dict)
    current: str | None = None
    _current_indent: int = -1
    _started: float = 0.0
    _error_run: str | None = None
    _error_lines: list[str] = field(default_factory=list)
    _closed_run: str | None = None  # block closed; the next line says whether it raised

    @property
    def runs_done(self) -> int:
        return sum(1 for r in self.runs.values() if r.status != "running")

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        match = _LOG_LINE.match(line)
        if match is None:
            if self._error_run is not None and line.strip():
                self._error_lines.append(line.strip())
            return
        self._finish_error()
        rest = match.group("rest")
        closed, self._closed_run = self._closed_run, None
        indent = len(rest) - len(rest.lstrip(" "))
        message = rest.strip()
        if closed and not ((m := _RUN_ERROR.match(message)) and m.group("name") == closed):
            self._succeed(closed)
        if m := _RUNS_TOTAL.search(message):
            self.runs_total = int(m.group(2))
            self._emit("planned")
        elif m := _RUN_START.match(message):
            self.current = m.group("name")
            self._current_indent = indent
            self._started = time.monotonic()
            self.runs[self.current] = RunTrace(self.current)
            self._emit("run_started")
        elif m := _RUN_ERROR.match(message):
            name = m.group("name")
            trace = self.runs.setdefault(name, RunTrace(name))
            trace.status = "failed"
            if trace.wall_seconds is None and self._started:
                trace.wall_seconds = round(time.monotonic() - self._started, 3)
            self._error_run = name
            self._error_lines = []
            self._emit("run_failed", run=name)
        elif self.current and (m := _CLOSE.match(message)) and indent == self._current_indent:
            trace = self.runs[self.current]
            seconds = float(m.group("seconds")) * (0.001 if m.group("unit") == "ms" else 1)
            trace.wall_seconds = round(seconds, 3)
            self._closed_run = self.current
            self.current = None
        elif self.current and (m := _EVAL_INSTANCES.search(message)):
            self.runs[self.current].eval_instances = int(m.group(1))
            self._emit("instances")
        elif self.current and (m := _REQUESTS.match(message)):
            self.runs[self.current].requests = int(m.group(1))
            self._emit("requests")
        elif self.current and _PROCESSED.match(message):
            self._emit("requests_done")

    def close(self) -> None:
        self._finish_error()
        if self._closed_run:
            self._succeed(self._closed_run)
            self._closed_run = None

    def _succeed(self, name: str) -> None:
        trace = self.runs[name]
        if trace.status == "running":
            trace.status = "succeeded"
            self._emit("run_finished", run=name)

    def _finish_error(self) -> None:
        if self._error_run is None:
            return
        # The last line of HELM's traceback names the exception and its message.
        lines = [ln for ln in self._error_lines if ln]
        self.runs[self._error_run].error = lines[-1] if lines else "run failed"
        self._error_run = None
        self._error_lines = []

    def _emit(self, event: str, run: str | None = None) -> None:
        if self.on_progress is None:
            return
        run = run or self.current
        current = self.runs.get(run) if run else None
        payload = {
            "event": event,
            "runs_done": self.runs_done,
            "runs_total": self.runs_total,
            "current_run": None if self.hidden else run,
            "instances": current.eval_instances if current else None,
            "requests": current.requests if current else None,
        }
        try:
            self.on_progress(payload)
        except Exception:  # a broken observer must not break the evaluation
            pass


# -------------------------------------------------------------------------------------------- helm
def link_helm_data_cache(helm_output: Path, cache: str | Path | None) -> bool:
    """Let HELM find data staged by `stage_helm_data`: the scenarios' downloads (`scenarios/`) and
    the prepared instances (`scenario_instances/`, read with `--cache-instances`)."""
    if not cache:
        return False
    root = Path(cache) / "benchmark_output"
    if not root.is_dir():
        root = Path(cache)
    linked = False
    for name in ("scenarios", "scenario_instances"):
        source, target = root / name, helm_output / name
        if source.is_dir() and not target.exists():
            helm_output.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve(), target_is_directory=True)
            linked = True
    return linked


# helm-run itself, with some of HELM's own Python made faster and its results unchanged (helm_fast.py);
# "helm.benchmark.run" is stock helm-run.
HELM_MODULE = "evaluation.engine.helm_fast"


def helm_command(
    conf: Path,
    suite_id: str,
    output: Path,
    prod_env: Path,
    threads: int,
    default_instances: int,
    plugins: Sequence[str],
) -> list[str]:
    cmd = [sys.executable, "-m", HELM_MODULE, "--conf-paths", str(conf), "--suite", suite_id]
    cmd += ["-m", str(default_instances), "-o", str(output), "--local-path", str(prod_env), "-n", str(threads)]
    cmd += ["--models-to-run", DEPLOYMENT, "--disable-cache"]
    if plugins:
        cmd += ["--plugins", *plugins]
    return cmd


def helm_env(base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["NLTK_DATA"] = str(nltk_data_dir())
    env["HELM_HTTP_MODEL_BASE_URL"] = base_url
    env["PYTHONUNBUFFERED"] = "1"
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.setdefault(key, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_helm(
    cmd: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    time_limit_s: float,
    progress: HelmProgress,
    kill_switch: threading.Event | None = None,
    standby: Standby | None = None,
) -> int:
    """Run helm-run, streaming its log into `progress`; kill it past `time_limit_s` (HelmTimeout) or
    when `kill_switch` is set (the model server failed under it)."""
    with open(log_path, "w", encoding="utf-8") as log:
        if standby is not None:
            standby.take_over(cmd, env=env, cwd=cwd, log=None)
            process = standby.process
        else:
            process = _spawn(
                cmd,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
            )
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            _kill_group(process, signal.SIGKILL)

        timer = threading.Timer(time_limit_s, on_timeout)
        timer.daemon = True
        timer.start()
        done = threading.Event()
        if kill_switch is not None:

            def on_kill_switch() -> None:
                while not done.is_set():
                    # Unreaped (poll() is None), the process group id cannot have been reused.
                    if kill_switch.wait(0.2) and process.poll() is None:
                        _kill_group(process, signal.SIGKILL)
                        return

            threading.Thread(target=on_kill_switch, name="helm-kill-switch", daemon=True).start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                progress.feed(line)
            returncode = process.wait()
        finally:
            timer.cancel()
            done.set()
            if process.poll() is None:
                _kill_group(process, signal.SIGKILL)
                process.wait()
            progress.close()
    if timed_out.is_set():
        raise errors.HelmTimeout(
            f"helm-run ran past the suite's time limit of {time_limit_s:.0f} s", log_tail=tail(log_path)
        )
    return returncode


# ------------------------------------------------------------------------------------------- stats
def parse_stats(stats: list[dict[str, Any]], *, run: str, scenario: str) -> list[Record]:
    """HELM's stats.json entries as flat records (value = HELM's mean, None when count is 0)."""
    records = []
    for stat in stats:
        name = stat.get("name", {})
        perturbation = name.get("perturbation") or {}
        mean = stat.get("mean")
        if mean is None and stat.get("count"):
            mean = stat.get("sum", 0) / stat["count"]
        if isinstance(mean, float) and not math.isfinite(mean):
            mean = None
        records.append(
            Record(
                run=run,
                scenario=scenario,
                metric=name.get("name", ""),
                split=name.get("split"),
                sub_split=name.get("sub_split"),
                perturbation=perturbation.get("name"),
                computed_on=perturbation.get("computed_on"),
                value=mean,
                count=int(stat.get("count", 0)),
            )
        )
    return records


def read_stats_file(path: Path, *, run: str, scenario: str) -> list[Record]:
    return parse_stats(json.loads(path.read_text()), run=run, scenario=scenario)


def _instances(records: list[Record]) -> int | None:
    for r in records:
        if r.metric == "num_instances" and r.perturbation is None and r.split in ("test", None):
            return int(r.value) if r.value is not None else None
    return None


# ---------------------------------------------------------------------------------------- hardware
def detect_hardware() -> Hardware:
    hw = Hardware(
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python_version=platform.python_version(),
        platform=platform.platform(),
    )
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    hw.cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # Read without importing torch (seconds of start-up on a small machine); the server imports it.
    try:
        from importlib.metadata import version
        from importlib.util import find_spec

        hw.torch_version = version("torch")
        spec = find_spec("torch")
        if spec and spec.submodule_search_locations:
            text = (Path(spec.submodule_search_locations[0]) / "version.py").read_text()
            if m := re.search(r"^cuda\b.*=\s*['\"]([^'\"]+)['\"]", text, re.M):
                hw.cuda_version = m.group(1)
    except Exception:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        gpus = [line.split(",") for line in out.stdout.strip().splitlines() if "," in line]
        if out.returncode == 0 and gpus:
            hw.gpu_count = len(gpus)
            hw.gpu_name = gpus[0][0].strip()
            hw.gpu_memory_bytes = int(float(gpus[0][1]) * 1024 * 1024)  # MiB
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return hw


def count_parameters(model_dir: Path, adapter_base: Path | None = None) -> int | None:
    """Parameters in the safetensors files (adapter plus base), from their headers only."""
    total = 0
    found = False
    for folder in [model_dir] + ([adapter_base] if adapter_base else []):
        for path in sorted(Path(folder).glob("*.safetensors")):
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                found = True
                total += math.prod(info.get("shape", [])) if info.get("shape") else 1
    return total if found else None


def _helm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crfm-helm")
    except PackageNotFoundError:
        return "unknown"


def _pick(stats: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if stats.get(key) is not None:
            return stats[key]
    return None


def efficiency_from(
    server_stats: dict[str, Any], *, wall: float, helm: float, device_seconds: float, params: int | None
) -> Efficiency:
    latency = next((v for k in ("latency_seconds", "latency") if isinstance(v := server_stats.get(k), dict)), {})
    output_tokens = int(_pick(server_stats, "output_tokens", "generated_tokens", "completion_tokens") or 0)
    busy = _pick(server_stats, "busy_seconds", "busy_s")
    device = str(_pick(server_stats, "device") or "cpu")
    return Efficiency(
        wall_seconds=round(wall, 3),
        helm_seconds=round(helm, 3),
        gpu_seconds=round(device_seconds, 3),
        device=device,
        output_tokens=output_tokens,
        prompt_tokens=int(_pick(server_stats, "prompt_tokens", "input_tokens") or 0),
        # Throughput over the time HELM was evaluating, as a participant experiences it.
        output_tokens_per_second=round(output_tokens / helm, 3) if helm > 0 else 0.0,
        request_count=int(_pick(server_stats, "requests", "request_count", "process_requests") or 0),
        latency_mean_s=_pick(server_stats, "latency_mean_s") or latency.get("mean_s") or latency.get("mean"),
        latency_p95_s=_pick(server_stats, "latency_p95_s") or latency.get("p95_s") or latency.get("p95"),
        busy_seconds=busy,
        peak_gpu_memory_bytes=_pick(server_stats, "peak_gpu_memory_bytes", "peak_memory_bytes"),
        parameter_count=_pick(server_stats, "parameter_count", "parameters") or params,
    )


# ---------------------------------------------------------------------------------------- evaluate
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def shard_entries(entries: Sequence[SuiteEntry], shards: int, default_instances: int) -> list[list[SuiteEntry]]:
    """Split a suite's run entries over `shards` helm-run processes, balanced by instances.

    Entries of one scenario stay in one process, so no two processes prepare the same scenario's
    data at once; the order within a shard is the suite's.
    """
    by_scenario: dict[str, list[SuiteEntry]] = {}
    for entry in entries:
        by_scenario.setdefault(entry.scenario, []).append(entry)
    groups = sorted(by_scenario.values(), key=lambda g: -sum(e.instances or default_instances for e in g))
    loads = [0] * max(1, min(shards, len(groups)))
    chosen: list[set[int]] = [set() for _ in loads]
    for group in groups:
        i = loads.index(min(loads))
        loads[i] += sum(e.instances or default_instances for e in group)
        chosen[i].update(id(e) for e in group)
    return [[e for e in entries if id(e) in ids] for ids in chosen if ids]


class CombinedProgress:
    """Several helm-run processes' progress as one: counts summed, events passed on under a lock."""

    def __init__(self, on_progress: ProgressCallback | None, hidden: bool, shards: int):
        self.on_progress = on_progress
        self.lock = threading.Lock()
        self.parts = [HelmProgress(on_progress=self._forward, hidden=hidden) for _ in range(shards)]

    @property
    def runs(self) -> dict[str, RunTrace]:
        return {name: trace for part in self.parts for name, trace in part.runs.items()}

    def _forward(self, payload: dict[str, Any]) -> None:
        if self.on_progress is None:
            return
        with self.lock:
            totals = [part.runs_total for part in self.parts]
            payload = {
                **payload,
                "runs_done": sum(part.runs_done for part in self.parts),
                "runs_total": sum(totals) if all(t is not None for t in totals) else None,
            }
            self.on_progress(payload)


def run_helm_shards(commands: list[list[str]], *, env: dict[str, str], cwd: Path, log_paths: list[Path],
                    time_limit_s: float, progress: CombinedProgress, kill_switch: threading.Event,
                    standbys: list[Standby | None]) -> int:  # fmt: skip
    """Run one helm-run per shard at once (threads wait on them); the first failure stops the others."""
    codes: list[int] = [0] * len(commands)
    failures: list[BaseException] = []

    # Python 3.11's Thread.join, interrupted by a signal handler's exception, marks a running thread
    # as stopped, so a second join returns at once: wait on our own events instead.
    finished = [threading.Event() for _ in commands]

    def one(i: int) -> None:
        try:
            codes[i] = run_helm(
                commands[i], env=env, cwd=cwd, log_path=log_paths[i], time_limit_s=time_limit_s,
                progress=progress.parts[i], kill_switch=kill_switch, standby=standbys[i],
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other shards stopped
            failures.append(exc)
            kill_switch.set()
        finally:
            finished[i].set()

    # helm-run dies with the thread that started it (PR_SET_PDEATHSIG); each thread outlives its process.
    for i in range(len(commands)):
        threading.Thread(target=one, args=(i,), name=f"helm-{i}").start()
    try:
        for event in finished:
            event.wait()
    except BaseException:
        # Interrupted while waiting (a cancelled job): the shards must not run on without us.
        kill_switch.set()
        for event in finished:
            event.wait()
        raise
    if failures:
        raise failures[0]
    return max(codes, key=abs)


class ServerWatch(threading.Thread):
    """While helm-run runs beside a starting server: wait for its health, then keep watching it.

    If the server fails to load, never becomes healthy, or dies, `failure` says why and the kill
    switch stops helm-run, whose requests would otherwise wait on a server that will never answer.
    """

    def __init__(self, server: ServerProcess, timeout_s: float, on_ready: Callable[[], None]):
        super().__init__(name="server-watch", daemon=True)
        self.server, self.timeout_s, self.on_ready = server, timeout_s, on_ready
        self.kill_switch = threading.Event()
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.failure: errors.EngineError | None = None

    def run(self) -> None:
        try:
            self.server.wait_healthy(self.timeout_s)
        except errors.EngineError as exc:
            self.failure = exc
            self.kill_switch.set()
            return
        self.ready.set()
        self.on_ready()
        while not self.finished.wait(0.5):
            if not self.server.alive():
                self.failure = errors.ServerCrashed(
                    "the model server crashed during the evaluation", log_tail=tail(self.server.log_path)
                )
                self.kill_switch.set()
                return

    def stop(self) -> None:
        self.finished.set()
        if self.is_alive():
            self.join(timeout=5)


def evaluate(
    *,
    model_dir: str | Path,
    suite: str | Suite,
    track_memory_gb: float,
    out_dir: str | Path,
    adapter_base: str | Path | None = None,
    threads: int = 128,
    time_limit_s: float | None = None,
    max_eval_instances: int | None = None,
    on_progress: ProgressCallback | None = None,
    device: str = "auto",
    dtype: str = "auto",
    health_timeout_s: float = 300.0,
    server_cmd: list[str] | None = None,
    helm_suite_id: str = "eval",
    track_name: str | None = None,
    helm_data_cache: str | Path | None = None,
    standby: bool = False,
    helm_processes: int | None = None,
) -> ResultDocument:
    """Evaluate one submission on one suite; return (and write to `<out>/result.json`) the document.

    `server_cmd` replaces the model server command (its port is then `{port}` in the arguments);
    the benchmarks use it to compare servers. `standby`: take over processes that `start_standbys`
    started (imports done) if they wait, and start the next ones when this evaluation has run.
    """
    suite_obj = suite if isinstance(suite, Suite) else get_suite(suite)
    model_path = Path(model_dir).resolve()
    base_path = Path(adapter_base).resolve() if adapter_base else None
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    limit = float(time_limit_s or suite_obj.time_limit_s)
    doc = ResultDocument(
        suite=suite_obj.name,
        track_memory_gb=float(track_memory_gb),
        helm_version=_helm_version(),
        started_at=_now(),
        model={"path": str(model_path), "adapter_base": str(base_path) if base_path else None},
        hardware=detect_hardware(),
    )
    started = time.monotonic()
    default_n = min(suite_obj.default_instances, max_eval_instances or suite_obj.default_instances)
    shards = shard_entries(suite_obj.entries, helm_process_count(helm_processes), default_n)
    server_standby = take_standby("server") if standby and server_cmd is None else None
    helm_standbys = [take_standby("helm") if standby else None for _ in shards]
    if standby and standbys_beside_evaluation(len(shards)):
        start_standbys(helm_processes=len(shards))  # the next evaluation's: importing while this one runs
    # Our server inherits a listening socket, so helm-run starts at once, beside it; a replacement
    # server (`server_cmd`, the benchmarks' baselines) binds its own port and is waited for first.
    listener = server_standby.listener if server_standby else listening_socket() if server_cmd is None else None
    port = listener.getsockname()[1] if listener else free_port()
    command = (
        [part.replace("{port}", str(port)) for part in server_cmd]
        if server_cmd
        else server_command(
            model_path, port, track_memory_gb, base_path, device, dtype, track_name, listen_fd=listener.fileno()
        )
    )
    server = ServerProcess(
        command, port, out / "server.log", env=helm_env(f"http://127.0.0.1:{port}"),
        pass_fds=(listener.fileno(),) if listener else (),
    )  # fmt: skip
    progress = CombinedProgress(on_progress, suite_obj.hidden, len(shards))
    helm_seconds = 0.0
    server_stats: dict[str, Any] = {}
    watch = ServerWatch(server, health_timeout_s, on_ready=lambda: _emit(on_progress, {"event": "server_ready"}))
    try:
        _emit(on_progress, {"event": "server_starting"})
        try:
            if server_standby is not None:
                server.adopt(server_standby)
            else:
                server.start()
        finally:
            if listener is not None:
                listener.close()  # the server holds its own copy
        if listener is None:
            server.wait_healthy(health_timeout_s)
        watch.start()
        facts = model_facts(model_path, base_path)
        doc.model.update({"max_positions": facts["max_sequence_length"]})
        prod_env = write_prod_env(out / "prod_env", server.base_url, facts)
        staged = link_helm_data_cache(out / "helm", helm_data_cache or os.environ.get("HELM_DATA_CACHE"))
        commands, log_paths = [], []
        for i, shard in enumerate(shards):
            suffix = "" if i == 0 else f"-{i}"
            conf = write_conf(out / f"run_entries{suffix}.conf", shard, max_eval_instances)
            shard_threads = max(1, math.ceil(threads / len(shards)))
            cmd = helm_command(conf, helm_suite_id, out / "helm", prod_env, shard_threads, default_n, suite_obj.plugins)
            commands.append(cmd + (["--cache-instances"] if staged else []))
            log_paths.append(out / f"helm{suffix}.log")
        helm_started = time.monotonic()
        try:
            returncode = run_helm_shards(
                commands, env=helm_env(server.base_url), cwd=out, log_paths=log_paths, time_limit_s=limit,
                progress=progress, kill_switch=watch.kill_switch, standbys=helm_standbys,
            )  # fmt: skip
        finally:
            helm_seconds = time.monotonic() - helm_started
            watch.stop()
            server_stats = server.stats() if watch.ready.is_set() else {}
        if watch.failure is not None and not watch.ready.is_set():
            raise watch.failure  # the model never served: its load error is the job's error
        doc.model.update(
            {k: server.health[k] for k in ("parameters", "device", "dtype", "max_positions") if k in server.health}
        )
        server_died = not server.alive()
        _collect_runs(doc, suite_obj, progress, out / "helm" / "runs" / helm_suite_id)
        succeeded = [r for r in doc.runs if r.status == "succeeded"]
        if server_died and len(succeeded) < len(doc.runs):
            raise errors.ServerCrashed("the model server crashed during the evaluation", log_tail=tail(server.log_path))
        if not succeeded:
            log_tail = tail(out / "helm.log")
            last = next((ln for ln in reversed(log_tail.splitlines()) if ln.strip()), "")
            raise errors.HelmFailed(
                f"helm-run finished with code {returncode} and no successful run: {last.strip()[:300]}",
                log_tail=log_tail,
            )
        doc.status = "succeeded" if len(succeeded) == len(doc.runs) else "partial"
        for run in doc.runs:
            if run.status == "failed":
                doc.errors.append({"type": "RunFailed", "kind": "run", "message": run.error or "", "run": run.name})
    except errors.EngineError as exc:
        doc.status = "failed"
        doc.errors.append(exc.to_dict())
        raise
    finally:
        server.stop()
        wall = time.monotonic() - started
        for helm_standby in helm_standbys:
            if helm_standby is not None and not helm_standby.told:
                helm_standby.discard()  # taken but never told its job (the server failed first)
        device_seconds = (server.stopped_at or time.monotonic()) - (server.started_at or started)
        doc.efficiency = efficiency_from(
            {**server.health, **server_stats},
            wall=wall,
            helm=helm_seconds,
            device_seconds=device_seconds,
            params=count_parameters(model_path, base_path),
        )
        doc.finished_at = _now()
        (out / "result.json").write_text(doc.to_json())
        # The server's own counters (decode steps, batches, decode mode), for benchmarks; not the contract.
        (out / "server_stats.json").write_text(json.dumps(server_stats, indent=1, default=str))
        _emit(on_progress, {"event": "finished", "status": doc.status})
    if standby:
        # Only after an evaluation that ran: a failed or cancelled one may be a worker being stopped.
        start_standbys(helm_processes=len(shards))
    return doc


def _emit(on_progress: ProgressCallback | None, payload: dict[str, Any]) -> None:
    if on_progress is not None:
        try:
            on_progress(payload)
        except Exception:
            pass


def _collect_runs(doc: ResultDocument, suite: Suite, progress: HelmProgress, runs_dir: Path) -> None:
    """One RunResult per run HELM attempted or wrote; records from every stats.json."""
    names = list(progress.runs)
    if runs_dir.is_dir():
        names += [p.name for p in sorted(runs_dir.iterdir()) if (p / "stats.json").is_file() and p.name not in names]
    for name in names:
        trace = progress.runs.get(name, RunTrace(name))
        entry = entry_for_run(suite, name)
        scenario = entry.scenario if entry else name.split(":", 1)[0]
        stats_path = runs_dir / name / "stats.json"
        records: list[Record] = []
        status = trace.status
        error = trace.error
        if status != "failed" and stats_path.is_file():
            records = read_stats_file(stats_path, run=name, scenario=scenario)
            status = "succeeded"
        elif status != "failed":
            status, error = "failed", error or "HELM wrote no stats for this run"
        doc.records.extend(records)
        doc.runs.append(
            RunResult(
                name=name,
                scenario=scenario,
                main_metric=suite.main_metric(scenario),
                status=status,
                error=error,
                wall_seconds=trace.wall_seconds,
                instances=_instances(records),
                ranked=entry.ranked if entry else True,
            )
        )
