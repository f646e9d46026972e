"""Seconds to load a model onto the GPU: Hugging Face's `from_pretrained` against `fast_load`.

    python -m benchmarks.load_speed --model DIR [--repeat 2]

In one process, imports and the CUDA context done first, the file pages in the page cache (as when
an upload was just checked); each way `--repeat` times, alternating, then every tensor of the two
models compared bitwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from evaluation.engine import fast_load

    torch.zeros(1, device="cuda")
    folder = Path(args.model)

    def usual():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                    device_map={"": "cuda"}, local_files_only=True)  # fmt: skip

    ways = {"from_pretrained": usual, "fast_load": lambda: fast_load.load(folder, torch.bfloat16, "cuda")}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeat):
        for name, load in ways.items():
            torch.cuda.synchronize()
            started = time.perf_counter()
            model = load()
            torch.cuda.synchronize()
            times[name].append(round(time.perf_counter() - started, 3))
            del model
            torch.cuda.empty_cache()
    a, b = usual().state_dict(), fast_load.load(folder, torch.bfloat16, "cuda").state_dict()
    differ = [k for k in a if k not in b or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    gb = sum(t.numel() * t.element_size() for t in a.values()) / 1e9
    print(json.dumps({"seconds": times, "weights_gb": round(gb, 2), "tensors": len(a),
                      "tensors_that_differ": differ[:5], "same_keys": a.keys() == b.keys()}))  # fmt: skip


if __name__ == "__main__":
    main()
