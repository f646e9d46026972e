"""What grouping a gather's rows by prefix costs the model thread (no model needed).

    python -m benchmarks.scheduler_cost

128 rows of three few-shot runs (prefixes of 438, 461 and 483 tokens, 20-160 tokens each of their
own, as in the multiple-choice benchmark): milliseconds per call of `prefix_groups` (the generator's
grouping of a batch) and `_grouped_costs` (the scheduler's plan of one).
"""

import json
import random
import time

from evaluation.engine.server.batching import _grouped_costs
from evaluation.engine.server.generation import Row, prefix_groups


def per_call_ms(fn, repeat: int = 100) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - started) * 1000 / repeat, 2)


def main() -> None:
    rng = random.Random(0)
    prefixes = [[rng.randrange(32000) for _ in range(n)] for n in (438, 461, 483)]
    seqs = [prefixes[i % 3] + [rng.randrange(32000) for _ in range(rng.randrange(20, 160))] for i in range(128)]
    rows = [Row(prompt_ids=s, max_new_tokens=1) for s in sorted(seqs)]
    print(json.dumps({
        "rows": len(rows),
        "prefix_groups_ms": per_call_ms(lambda: prefix_groups(seqs)),
        "grouped_costs_ms": per_call_ms(lambda: _grouped_costs(rows)),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
