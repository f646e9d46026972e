"""Measure the card's bf16 matrix rate and memory bandwidth, so efficiency figures can be stated as
shares of what this very machine can do (issue 8). Prints one JSON line.

    python -m benchmarks.gpu_ceilings
"""

import json
import time


def copy_rate(device) -> float:
    """The card's copy rate in bytes a second (what the decode benchmarks' shares are of), printed with
    the card's name."""
    import torch

    rate = measure(str(device))["copy_bandwidth_tb_s"] * 1e12
    print(f"{torch.cuda.get_device_name(device)}: copy rate {rate / 1e12:.2f} TB/s", flush=True)
    return rate


def measure(device: str = "cuda") -> dict:
    import torch

    def timed(fn, repeat: int) -> float:
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeat

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul_s = timed(lambda: a @ b, 20)
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), 20)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "bf16_matmul_tflops": 2 * n**3 / matmul_s / 1e12,
        # A copy reads and writes every byte.
        "copy_bandwidth_tb_s": 2 * src.numel() / copy_s / 1e12,
    }


if __name__ == "__main__":
    print(json.dumps(measure()))
