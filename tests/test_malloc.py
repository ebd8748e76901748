"""keep_freed_memory: a CEN step stops mapping and faulting in its activations afresh (glibc on Linux)."""

import os
import subprocess
import sys
import textwrap

import pytest

STEP_FAULTS = textwrap.dedent("""
    import resource, torch
    from cen_lab._util.malloc import keep_freed_memory
    from cen_lab.config import ExperimentConfig
    from cen_lab.network.architectures import build_model
    from cen_lab.experiments.training import _make_optimizer, forward_backward

    tuned = keep_freed_memory()
    torch.manual_seed(0)
    cfg = ExperimentConfig.preset("default")
    model = build_model(cfg.model, 2, 3, 5, "seg", "disjoint").train()
    optimizer = _make_optimizer(model, cfg)
    x, y = torch.randn(2, 32, 3, 32, 32), torch.randint(0, 5, (32, 32, 32))
    for step in range(10):
        if step == 4:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        forward_backward(model, optimizer, x, y)
        optimizer.step()
    print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6)
""")


def _faults_per_step(tuning: str) -> tuple[bool, float]:
    env = {**os.environ, "CEN_LAB_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", STEP_FAULTS], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_removes_the_page_faults_of_a_cen_step():
    tuned, faults = _faults_per_step("1")
    untuned, faults_default = _faults_per_step("0")
    assert tuned and not untuned
    # default glibc: ~9,000 minor faults per default CEN step (activations mapped and zero-filled anew)
    assert faults < 1000 and faults_default > 5 * max(faults, 100), (faults, faults_default)


def test_keep_freed_memory_can_be_turned_off_and_decides_once(monkeypatch):
    from cen_lab._util.malloc import keep_freed_memory

    keep_freed_memory.cache_clear()
    try:
        monkeypatch.setenv("CEN_LAB_MALLOC_TUNING", "0")
        assert keep_freed_memory() is False
        monkeypatch.setenv("CEN_LAB_MALLOC_TUNING", "1")
        assert keep_freed_memory() is False  # decided once per process
    finally:
        keep_freed_memory.cache_clear()  # later trainings in this process tune again
