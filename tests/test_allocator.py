"""glibc allocator tuning: freed tensors are reused instead of being faulted in afresh."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_PROBE = r"""
import json, resource, sys
import torch

def faults(n=5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        x = torch.ones(2 * 2**20)  # 8 MB, like a decoder tensor: by default glibc maps it afresh every time
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

def warm_up():  # a larger block first, as an encoder pass leaves behind: free memory to reuse
    x = torch.ones(8 * 2**20)
    del x

warm_up()
before = faults()
from napari_sam.engine.allocator import tune_allocator
applied = tune_allocator()
again = tune_allocator()
warm_up()
after = faults()
print(json.dumps({"applied": applied, "again": again, "before": before, "after": after}))
"""


def _probe(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_stops_page_faults_on_reused_tensors():
    r = _probe({})
    assert r["applied"] is True and r["again"] is True
    # 5 x 8 MB = ~10,000 fresh pages without tuning; reused heap memory afterwards
    assert r["before"] > 5 * 1500
    assert r["after"] < r["before"] / 2


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_can_be_switched_off():
    r = _probe({"NAPARI_SAM_TUNE_MALLOC": "0"})
    assert r["applied"] is False
    assert r["after"] > r["before"] / 2  # nothing changed: still fresh pages every time


def test_tuning_is_skipped_with_another_allocator_preloaded(monkeypatch):
    from napari_sam.engine import allocator

    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.tune_allocator() is False


def test_predictor_on_cpu_tunes_the_allocator(monkeypatch, tiny_model):
    from napari_sam.engine import allocator
    from napari_sam.engine.predictor import SamPredictor

    calls = []
    monkeypatch.setattr("napari_sam.engine.predictor.tune_allocator", lambda: calls.append(1) or True)
    SamPredictor(tiny_model)
    assert calls == [1]
    assert allocator.ENV == "NAPARI_SAM_TUNE_MALLOC"
