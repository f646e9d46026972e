"""Keep the garbage collector's full collections short in the engine's long-lived processes.

A full collection walks every object a process holds; in a process that imported torch and
transformers most of those are module-level objects that live until the process ends (0.28–0.29 s
per collection after a helm standby's imports on the dev box, `benchmarks/helm_python.py`). `freeze()`
moves what exists now into the permanent generation, which collections skip. Nothing is freed later
that would have been freed otherwise, except cycles among the objects frozen here: none that matter,
since they are the imports and the loaded model.
"""

import gc


def freeze(collect: bool = True) -> None:
    """`collect=False` where a process must not wait for a full collection (a server about to serve):
    the few objects made since the last freeze are frozen as they are, garbage included."""
    if collect:
        gc.collect()
    gc.freeze()
