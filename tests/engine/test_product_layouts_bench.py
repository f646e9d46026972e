"""benchmarks/product_layouts.py times the same products in each layout: every layout computes what the
engine's own (`tn`: F.linear, or addmm into the residual) does."""

import torch

from benchmarks import product_layouts as bench


def _chain(out, inp, adds, layout):
    return bench.product_chain(out, inp, adds, 5, layout, 2, "cpu", torch.float32)


def test_every_layout_computes_the_engines_product():
    for name, (out, inp, adds) in bench.product_shapes("1b").items():
        out, inp = out // 16, inp // 16  # the shapes' proportions, small enough for the CPU
        last = _chain(out, inp, False, "tn")()
        assert last.shape == (5, out) and last.abs().sum() > 0
        for layout in ("nn", "wx"):
            torch.testing.assert_close(_chain(out, inp, False, layout)(), last, msg=f"{name} {layout}")
        if adds:  # the residual holds the sum of both copies' products
            summed = _chain(out, inp, True, "tn")()
            assert not torch.allclose(summed, last)
            torch.testing.assert_close(_chain(out, inp, True, "nn")(), summed, msg=f"{name} nn, added")


def test_the_shapes_take_each_sizes_own_head_width():
    # 7b: 32 heads of 128 over 4,096 (a fixed width of 64 made its q/k/v and output half as wide)
    assert bench.product_shapes("7b")["qkv"] == (3 * 4096, 4096, False)
    assert bench.product_shapes("7b")["o"] == (4096, 4096, True)
    assert bench.product_shapes("1b")["qkv"] == (2048 + 2 * 4 * 64, 2048, False)
