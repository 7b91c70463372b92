"""glibc allocator tuning (engine/prediction/allocator.py): applied once, on glibc only, and can be switched off.

Its effect on speed (page faults per click) is measured in benchmarks/bench_engine.py, not here:
glibc's dynamic mmap threshold makes fault counts depend on the process's allocation history.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_PROBE = r"""
import json
from napari_sam.engine.prediction.allocator import tune_allocator
print(json.dumps({"applied": tune_allocator(), "again": tune_allocator()}))
"""


def _probe(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_applies_in_a_fresh_process():
    assert _probe({}) == {"applied": True, "again": True}


def test_tuning_can_be_switched_off():
    assert _probe({"NAPARI_SAM_TUNE_MALLOC": "0"}) == {"applied": False, "again": False}


class _FakeLibc:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture()
def fresh(monkeypatch):
    from napari_sam.engine.prediction import allocator

    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    return allocator


def test_sets_the_three_thresholds_once(fresh, monkeypatch):
    lib = _FakeLibc()
    monkeypatch.setattr(fresh.ctypes, "CDLL", lambda name: lib)
    assert fresh.tune_allocator() is True
    assert fresh.tune_allocator() is True
    assert lib.calls == [(-3, fresh.MMAP_THRESHOLD_BYTES), (-1, fresh.TRIM_BYTES), (-2, fresh.TOP_PAD_BYTES)]
    # the decoder's tensors (a few MB) must fall under the mmap threshold
    assert fresh.MMAP_THRESHOLD_BYTES >= 4 * 2**20


def test_reports_failure_of_mallopt(fresh, monkeypatch):
    monkeypatch.setattr(fresh.ctypes, "CDLL", lambda name: _FakeLibc(result=0))
    assert fresh.tune_allocator() is False


def test_skipped_with_another_allocator_preloaded(fresh, monkeypatch):
    lib = _FakeLibc()
    monkeypatch.setattr(fresh.ctypes, "CDLL", lambda name: lib)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert fresh.tune_allocator() is False
    assert lib.calls == []


def test_skipped_outside_glibc(fresh, monkeypatch):
    lib = _FakeLibc()
    monkeypatch.setattr(fresh.ctypes, "CDLL", lambda name: lib)
    monkeypatch.setattr(fresh.platform, "libc_ver", lambda: ("", ""))
    assert fresh.tune_allocator() is False
    assert lib.calls == []


def test_predictor_on_cpu_tunes_the_allocator(monkeypatch, tiny_model):
    from napari_sam.engine.prediction.predictor import SamPredictor

    calls = []
    monkeypatch.setattr("napari_sam.engine.prediction.predictor.tune_allocator", lambda: calls.append(1) or True)
    SamPredictor(tiny_model)
    assert calls == [1]
