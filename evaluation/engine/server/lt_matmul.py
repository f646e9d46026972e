"""A decode step's products through cuBLASLt with an algorithm chosen by timing, not by heuristics.

At a step's ~64 rows a 1.1 B product is a few MB of weight read in 5-15 µs, and what decides its time is
the kernel cuBLAS picks: its tile (how many of the card's SMs get work), whether it splits the inner
dimension, and how it sums the parts (on an H200 the down product is split and summed by a second
kernel, 2 µs a layer; docs/benchmarks.md, session 30). torch asks cuBLAS(Lt) for its first heuristic
guess and runs that. Here cuBLASLt is called directly (ctypes: it is the library torch already loaded)
for `out = a @ b (+ out)`, a [m, k] and b [k, n] row-major, and each shape's candidates (the
heuristic's list, its first VARIED also with other split counts) are timed once over the model's own weights
(`tune`); the fastest is kept for that shape. Products are CUDA-graph capturable (the workspace is one
device buffer, the scalars host values read at launch).

`ENGINE_LT=1` turns it on; off by default: on an H100 nothing beat cuBLAS's own choice at the step's
64 rows (at 32 and 48 rows the down product did, 11.1 µs against 12.7-12.9), and whole 1.1 B generation runs
did not move (docs/benchmarks.md, session 31). Not yet measured on an H200.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evaluation.engine.server import cuda_graphs
from evaluation.engine.server.switches import switch

log = logging.getLogger(__name__)

# cublasLt.h / library_types.h values.
_COMPUTE_32F = 68
_R_32F, _R_16F, _R_16BF = 0, 2, 14
_DTYPES = {torch.bfloat16: _R_16BF, torch.float16: _R_16F}
_PREF_MAX_WORKSPACE_BYTES = 1
_CONFIG_ID, _CONFIG_TILE_ID, _CONFIG_SPLITK_NUM, _CONFIG_REDUCTION_SCHEME = 0, 1, 2, 3
_CONFIG_STAGES_ID = 6
_SCHEME_NONE, _SCHEME_INPLACE, _SCHEME_COMPUTE_TYPE = 0, 1, 2
WORKSPACE_BYTES = 32 << 20
SPLITS = (1, 2, 3, 4, 6, 8)
# The heuristic's first this many algorithms are also tried with each of SPLITS.
VARIED = 8


class Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class HeuristicResult(ctypes.Structure):
    _fields_ = [
        ("algo", Algo),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


_P = ctypes.c_void_p


def _library_path() -> str | None:
    """The libcublasLt torch loaded (after a CUDA product), else the system's."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libcublasLt.so" in line:
                    return line.split()[-1]
    except OSError:
        pass
    return ctypes.util.find_library("cublasLt")


@functools.cache
def _lib() -> ctypes.CDLL | None:
    if not torch.cuda.is_available():
        return None
    a = torch.ones(8, 8, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, a)  # loads torch's cuBLAS(Lt), so the maps name it
    torch.cuda.synchronize()
    path = _library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    sigs = {
        "cublasLtCreate": [_P],
        "cublasLtMatmulDescCreate": [_P, ctypes.c_int, ctypes.c_int],
        "cublasLtMatrixLayoutCreate": [_P, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64],
        "cublasLtMatmulPreferenceCreate": [_P],
        "cublasLtMatmulPreferenceSetAttribute": [_P, ctypes.c_int, _P, ctypes.c_size_t],
        "cublasLtMatmulAlgoGetHeuristic": [_P, _P, _P, _P, _P, _P, _P, ctypes.c_int, _P, _P],
        "cublasLtMatmulAlgoConfigSetAttribute": [_P, ctypes.c_int, _P, ctypes.c_size_t],
        "cublasLtMatmulAlgoConfigGetAttribute": [_P, ctypes.c_int, _P, ctypes.c_size_t, _P],
        "cublasLtMatmulAlgoCheck": [_P, _P, _P, _P, _P, _P, _P, _P],
        "cublasLtMatmul": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_size_t, _P],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def available() -> bool:
    try:
        return _lib() is not None
    except (OSError, AttributeError):
        return False


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what}: cuBLAS status {status}")


@functools.cache
def _handle() -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    _check(_lib().cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    return handle


@functools.cache
def _workspace(device: torch.device) -> torch.Tensor:
    return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)


def config(algo: Algo) -> dict:
    """An algorithm's id, tile, stages, split count and reduction scheme (for reports)."""
    out = {}
    for name, attr in (("id", _CONFIG_ID), ("tile", _CONFIG_TILE_ID), ("stages", _CONFIG_STAGES_ID),
                       ("splits", _CONFIG_SPLITK_NUM), ("scheme", _CONFIG_REDUCTION_SCHEME)):  # fmt: skip
        value, written = ctypes.c_uint32(), ctypes.c_size_t()
        _lib().cublasLtMatmulAlgoConfigGetAttribute(
            ctypes.byref(algo), attr, ctypes.byref(value), 4, ctypes.byref(written)
        )
        out[name] = value.value
    return out


@dataclass(eq=False)
class Product:
    """`out [m, n] = a [m, k] @ b [k, n]`, plus out itself where `accumulate`, all row-major and contiguous
    in their rows (leading dimensions k, n, n), fp32 accumulation."""

    m: int
    n: int
    k: int
    dtype: torch.dtype
    accumulate: bool
    algo: Algo | None = None  # None: torch's product
    _descs: tuple = field(default=(), repr=False)

    def __post_init__(self):
        lib, t = _lib(), _DTYPES[self.dtype]
        op, a_l, b_l, c_l = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(op), _COMPUTE_32F, _R_32F), "desc")
        # Column-major view of the row-major product: out^T [n, m] = b^T [n, k] @ a^T [k, m].
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(a_l), t, self.n, self.k, self.n), "layout b")
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(b_l), t, self.k, self.m, self.k), "layout a")
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(c_l), t, self.n, self.m, self.n), "layout out")
        self._descs = (op, a_l, b_l, c_l)
        self._alpha = ctypes.c_float(1.0)
        self._beta = ctypes.c_float(1.0 if self.accumulate else 0.0)

    def _args(self):
        op, a_l, b_l, c_l = self._descs
        return _handle(), op, a_l, b_l, c_l, c_l

    def candidates(self, count: int = 32) -> list[Algo]:
        """The heuristic's algorithms, best guess first, then the first VARIED of them with the other
        split counts and schemes cuBLASLt accepts for this shape."""
        lib = _lib()
        pref = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
        size = ctypes.c_uint64(WORKSPACE_BYTES)
        lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(size), 8)
        results, returned = (HeuristicResult * count)(), ctypes.c_int()
        handle, op, a_l, b_l, c_l, d_l = self._args()
        _check(lib.cublasLtMatmulAlgoGetHeuristic(handle, op, a_l, b_l, c_l, d_l, pref, count, results,
                                                  ctypes.byref(returned)), "heuristic")  # fmt: skip
        found, seen = [], set()

        def add(algo: Algo) -> None:
            key = bytes(algo)
            if key in seen:
                return
            check = HeuristicResult()
            if lib.cublasLtMatmulAlgoCheck(handle, op, a_l, b_l, c_l, d_l, ctypes.byref(algo), ctypes.byref(check)):
                return
            if check.workspace_size > WORKSPACE_BYTES:
                return
            seen.add(key)
            found.append(algo)

        base = [results[i].algo for i in range(returned.value) if results[i].state == 0]
        for algo in base:
            add(Algo.from_buffer_copy(algo))
        for algo in base[:VARIED]:
            for splits in SPLITS:
                for scheme in (_SCHEME_NONE,) if splits == 1 else (_SCHEME_INPLACE, _SCHEME_COMPUTE_TYPE):
                    variant = Algo.from_buffer_copy(algo)
                    for attr, value in ((_CONFIG_SPLITK_NUM, splits), (_CONFIG_REDUCTION_SCHEME, scheme)):
                        v = ctypes.c_uint32(value)
                        lib.cublasLtMatmulAlgoConfigSetAttribute(ctypes.byref(variant), attr, ctypes.byref(v), 4)
                    add(variant)
        return found

    def __call__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, algo: Algo | None = None) -> torch.Tensor:
        algo = self.algo if algo is None else algo
        if algo is None:
            return out.addmm_(a, b) if self.accumulate else torch.mm(a, b, out=out)
        handle, op, a_l, b_l, c_l, d_l = self._args()
        ws = _workspace(out.device)
        stream = ctypes.c_void_p(torch.cuda.current_stream(out.device).cuda_stream)
        _check(
            _lib().cublasLtMatmul(handle, op, ctypes.byref(self._alpha), b.data_ptr(), a_l, a.data_ptr(), b_l,
                                  ctypes.byref(self._beta), out.data_ptr(), c_l, out.data_ptr(), d_l,
                                  ctypes.byref(algo), ws.data_ptr(), WORKSPACE_BYTES, stream),
            "cublasLtMatmul",
        )  # fmt: skip
        return out


def fits(product: Product, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether these tensors are the product's shape and layout (anything else goes to torch)."""
    return (
        a.shape == (product.m, product.k) and b.shape == (product.k, product.n) and out.shape == (product.m, product.n)
        and a.stride() == (product.k, 1) and b.stride() == (product.n, 1) and out.stride() == (product.n, 1)
        and a.dtype == b.dtype == out.dtype == product.dtype
        and all(t.data_ptr() % 16 == 0 for t in (a, b, out))
    )  # fmt: skip


def chain(product: Product, weights: list[torch.Tensor], seed: int = 0):
    """A step's reading of one product over every layer's weight [k, n], each into the same output:
    (the call, given an algorithm or None for torch's; its input a [m, k]; its output)."""
    w0 = weights[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a = (torch.randn(product.m, product.k, generator=gen) * 0.1).to(w0.device, w0.dtype)
    out = torch.zeros(product.m, product.n, device=w0.device, dtype=w0.dtype)

    def run(algo: Algo | None) -> None:
        for w in weights:
            product(a, w, out, algo)

    return run, a, out


def time_candidates(product: Product, chain: Callable[[Algo | None], None], replays: int = 30,
                    count: int = 32) -> list[tuple[float, Algo | None]]:  # fmt: skip
    """Each candidate's (ms a replay of `chain(algo)` as a CUDA graph, algo), fastest first; torch's own
    product (algo None) among them, timed first and again last, its lower figure kept, so a slow first
    graph (clocks, first loads) cannot favour a candidate (session 31, an H100: `lt_algos` timed torch's
    q/k/v first at 7.47 µs, the engine's warm-up at 6.69)."""
    _workspace(torch.device("cuda", torch.cuda.current_device()))  # made here, never inside a capture
    results = []
    for algo in [None, *product.candidates(count), None]:
        try:
            ms, _ = cuda_graphs.replayed_ms(functools.partial(chain, algo), replays)
        except RuntimeError:
            continue
        results.append((ms, algo))
    ours = min(ms for ms, algo in results if algo is None)
    results = [(ms, algo) for ms, algo in results if algo is not None] + [(ours, None)]
    results.sort(key=lambda r: r[0])
    return results


# --- the engine's products ----------------------------------------------------------------------

# (m, n, k, dtype, accumulate) -> the Product with its chosen algorithm, where one beat torch's.
_chosen: dict[tuple, Product] = {}
# A candidate must beat torch's product by this share to be kept (timing noise is ~1 %).
MARGIN = 0.03


def enabled() -> bool:
    """`ENGINE_LT` (1: on where cuBLASLt loads; default off until measured on the GPU)."""
    return switch("ENGINE_LT", default="0") is True


def any_chosen() -> bool:
    """Whether `tune` chose an algorithm for any shape (else every product is torch's)."""
    return bool(_chosen)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
    """`a @ b` into `out` (a new tensor if None), plus out's values where `accumulate`: by the algorithm
    `tune` chose for this shape, else by torch."""
    if out is None:
        out = torch.empty(a.shape[0], b.shape[1], device=a.device, dtype=a.dtype)
    product = _chosen.get((a.shape[0], b.shape[1], a.shape[1], a.dtype, accumulate)) if _chosen else None
    if product is not None and fits(product, a, b, out):
        return product(a, b, out)
    return out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)


def _cache_path() -> Path:
    return Path(os.environ.get("ENGINE_LT_CACHE") or Path.home() / ".cache" / "llm-portal" / "lt_algos.json")


@functools.cache
def _cache_prefix(device: torch.device) -> str:
    """The card, CUDA version and cuBLASLt library a choice holds for."""
    return f"{torch.cuda.get_device_name(device)}|{torch.version.cuda}|{Path(_library_path() or '').name}"


def _cache_key(product: Product, device: torch.device) -> str:
    dtype = str(product.dtype).removeprefix("torch.")
    return f"{_cache_prefix(device)}|{product.m}x{product.n}x{product.k}|{dtype}|{int(product.accumulate)}"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        log.warning("could not write the cuBLASLt choices to %s", path, exc_info=True)


def tune(groups: dict[str, tuple[list[torch.Tensor], bool]], rows: list[int], replays: int = 20) -> dict:
    """Choose each product's algorithm at each of `rows`: `groups` maps a name to the weights [k, n] of
    that product in every layer and whether it adds into its output. A candidate is timed over all the
    layers' weights (a chain replayed as a CUDA graph, as a step reads them); it is kept where it beats
    torch's product by MARGIN. Choices are remembered on disk (`ENGINE_LT_CACHE`) by card, CUDA and
    cuBLASLt version and shape, so a worker times each shape once. Returns name@rows: the choice (the
    algorithm's bytes in hex, "" for torch's), torch's and the chosen µs a product, the candidates
    timed, the seconds that took, and whether it came from the cache."""
    report: dict[str, Any] = {}
    if not (enabled() and available()):
        return report
    cache, dirty = _read_cache(), False
    for m in rows:
        for name, (weights, accumulate) in groups.items():
            w0 = weights[0]
            k, n = w0.shape
            product = Product(m, n, k, w0.dtype, accumulate)
            key = _cache_key(product, w0.device)
            if isinstance(cache.get(key), dict):
                entry = cache[key]
                if entry.get("algo"):
                    product.algo = Algo.from_buffer_copy(bytes.fromhex(entry["algo"]))
                    _chosen[(m, n, k, w0.dtype, accumulate)] = product
                report[f"{name}@{m}"] = {**entry, "cached": True}
                continue
            started = time.perf_counter()
            run, _, _ = chain(product, weights, seed=m)
            timed = time_candidates(product, run, replays)
            torch_ms = next(ms for ms, algo in timed if algo is None)
            best_ms, best = timed[0]
            keep = best is not None and best_ms < torch_ms * (1 - MARGIN)
            if keep:
                product.algo = best
                _chosen[(m, n, k, w0.dtype, accumulate)] = product
            per = 1e3 / len(weights)
            entry = {"algo": bytes(best).hex() if keep else "", "torch_us": round(torch_ms * per, 3),
                     "chosen_us": round(best_ms * per, 3) if keep else None, "candidates": len(timed) - 1,
                     "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
            cache[key], dirty = entry, True
            report[f"{name}@{m}"] = {**entry, "cached": False}
            log.info("cuBLASLt %s at %d rows: %s", name, m, entry)
    if dirty:
        _write_cache({**_read_cache(), **cache})
    return report


def forget() -> None:
    """Drop the chosen algorithms (tests; a model unloaded)."""
    _chosen.clear()
