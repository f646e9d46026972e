"""How long loading a model's weights onto the GPU takes, Hugging Face's `device_map` against `to_gpu`.

    python -m benchmarks.load_speed --model DIR [--repeat 2]

Each way in a fresh process (nothing cached in the CUDA allocator or the interpreter; the file pages
are in the page cache after the first), with the seconds, the process's peak resident memory, and
whether every parameter and buffer is bitwise the same both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(model: str, staged: bool) -> dict:
    import resource

    import torch

    from evaluation.engine.loading import _from_pretrained

    torch.zeros(1, device="cuda")  # the CUDA context is not the load's
    started = time.perf_counter()
    m = _from_pretrained(Path(model), torch.bfloat16, "cuda", staged=staged)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    digest = torch.zeros((), dtype=torch.float64, device="cuda")
    for i, t in enumerate(list(m.parameters()) + list(m.buffers())):
        digest += (t.detach().double().flatten()[::97] * (i + 1)).sum()
    return {"staged": staged, "seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "digest": digest.item(), "devices": sorted({str(t.device) for t in m.parameters()}),
            "tied": m.get_output_embeddings().weight is m.get_input_embeddings().weight}  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        print(json.dumps(child(sys.argv[2], sys.argv[3] == "1")))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    rows = []
    for _ in range(args.repeat):
        for staged in (False, True):
            out = subprocess.run([sys.executable, "-m", "benchmarks.load_speed", "_child", args.model, str(int(staged))],
                                 capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
            if out.returncode:
                rows.append({"staged": staged, "error": out.stderr[-1500:]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    digests = {r["digest"] for r in rows if "digest" in r}
    print(json.dumps({"same_weights_both_ways": len(digests) == 1}))


if __name__ == "__main__":
    main()
