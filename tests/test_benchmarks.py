"""The benchmark code runs and its reference agrees with the library (correctness only; no timing asserts)."""

import torch

from benchmarks import suite
from cen_lab.exchange import channel_exchange


def test_mask_reference_equals_channel_exchange():
    for m in (2, 3):
        gen = torch.Generator().manual_seed(m)
        x = torch.randn(m, 2, 6, 3, 3, generator=gen)
        gamma = torch.where(torch.rand(m, 6, generator=gen) < 0.5, 0.0, 1.0)
        ref = torch.stack(suite.mask_exchange_reference(list(x), list(gamma), 0.02))
        torch.testing.assert_close(channel_exchange(x, gamma, 0.02), ref)


def test_benchmark_parts_run_at_tiny_size():
    out = suite.bench_exchange(shapes=((2, 2, 4, 4, 4), (3, 2, 4, 4, 4)), repeats=1)
    assert out["exchange_speedup_vs_mask_reference"] > 0 and len(out["exchange_rows"]) == 2
    step, model = suite._step_fn(suite.ExperimentConfig.preset("tiny"), 2, batch=2, size=8)
    step()
    assert suite.conv_flops(model, 2, batch=2, size=8) > 0
