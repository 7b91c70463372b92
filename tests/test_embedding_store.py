"""The embedding store: memory LRU by bytes, persistent zarr v3 cache, invalidation, recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam import Segmenter
from napari_sam.engine.store.embedding_store import CacheWarning, EmbeddingStore
from napari_sam.engine.progress import run_blocking
from napari_sam.engine.prediction.segmenter import TiledEmbedding
from napari_sam.engine.prediction.predictor import Embedding
from napari_sam.errors import CacheError


def _stack(n: int = 3, size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((size, size), np.float64)
    base[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 2000
    return np.stack([rng.poisson(base + 100 + 50 * i).astype(np.uint16) for i in range(n)])


class EncodeCounter:
    """Counts encoder passes of a Segmenter's predictor."""

    def __init__(self, seg: Segmenter) -> None:
        self.calls = 0
        original = seg.predictor.encode

        def encode(x):
            self.calls += 1
            return original(x)

        seg.predictor.encode = encode


def _segmenter(model, cache_dir, **kw) -> tuple[Segmenter, EncodeCounter]:
    seg = Segmenter(model=model, cache_dir=cache_dir, **kw)
    return seg, EncodeCounter(seg)


def _group(cache_dir: Path) -> Path:
    groups = sorted(cache_dir.glob("*.zarr"))
    assert len(groups) == 1, groups
    return groups[0]


def test_persistent_cache_roundtrip_zarr_v3(tiny_model, tmp_path):
    stack = _stack(3)
    seg, count = _segmenter(tiny_model, tmp_path)
    seg.set_image(stack, axes="zyx")
    assert seg.store.persistent is False  # nothing opened before first use
    assert not seg.has_embedding(1)
    computed = seg.ensure_embedding(1)
    assert count.calls == 1 and seg.has_embedding(1) and not seg.has_embedding(0)
    group = _group(tmp_path)
    meta = json.loads((group / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    attrs = meta["attributes"]["napari_sam_embeddings"]
    assert attrs["signature"]["model"] == "tiny" and attrs["package_version"]
    assert attrs["original_size"] == [48, 48] and attrs["input_size"] == [256, 256]
    feats = json.loads((group / "features" / "zarr.json").read_text())
    assert feats["zarr_format"] == 3 and feats["data_type"] == "float16"

    again, count2 = _segmenter(tiny_model, tmp_path)
    again.set_image(stack.copy(), axes="zyx")
    assert again.has_embedding(1) and not again.has_embedding(2)
    loaded = again.ensure_embedding(1)
    assert count2.calls == 0
    torch.testing.assert_close(loaded.features, computed.features)
    assert loaded.original_size == (48, 48) and loaded.input_size == (256, 256)
    m1 = seg.segment(points=[(24, 24)], slice_index=1)
    m2 = again.segment(points=[(24, 24)], slice_index=1)
    np.testing.assert_array_equal(m1, m2)


def test_float16_on_disk_keeps_masks(tiny_model, cells_image):
    """Parity that justifies float16 on disk: masks from rounded features equal the float32 ones."""
    img, labels = cells_image
    seg = Segmenter(model=tiny_model)
    seg.set_image(img)
    emb = seg.ensure_embedding()
    half = Embedding(emb.features.half().float(), emb.original_size, emb.input_size)
    changed = total = 0
    for r, c in [(50, 60), (60, 170), (140, 80), (150, 180), (100, 120)]:
        for e, out in ((emb, "a"), (half, "b")):
            seg.predictor.set_embedding(e)
            m, _, _ = seg.predictor.predict(np.array([[c, r]], float), np.array([1]), multimask_output=True)
            if out == "a":
                ref = m
        changed += int((ref != m).sum())
        total += m.size
    assert changed / total < 1e-3, (changed, total)


def test_changed_data_is_not_served_stale(tiny_model, tmp_path):
    stack = _stack(2)
    seg, count = _segmenter(tiny_model, tmp_path)
    seg.set_image(stack, axes="zyx")
    seg.ensure_embedding(0)
    edited = stack.copy()
    edited[0, 3, 3] += 1  # one pixel
    seg.set_image(edited, axes="zyx")
    assert not seg.has_embedding(0)
    seg.ensure_embedding(0)
    assert count.calls == 2
    assert len(list(tmp_path.glob("*.zarr"))) == 2  # one group per image identity
    seg.set_image(stack, axes="zyx")  # the original data find their embeddings again
    seg.ensure_embedding(0)
    assert count.calls == 2


def test_memory_lru_is_bounded_by_bytes():
    store = EmbeddingStore(None, max_memory_bytes=3 * 4 * 8 * 4 * 4)
    store.open({}, n_slices=10, n_tiles=1, feature_shape=(8, 4, 4), original_size=(4, 4), input_size=(4, 4))
    for i in range(5):
        store.put(i, 0, Embedding(torch.full((1, 8, 4, 4), float(i)), (4, 4), (4, 4)))
    assert [store.in_memory(i, 0) for i in range(5)] == [False, False, True, True, True]
    store.get(2, 0)  # refresh 2; 3 is now the oldest
    store.put(5, 0, Embedding(torch.zeros(1, 8, 4, 4), (4, 4), (4, 4)))
    assert store.in_memory(2, 0) and not store.in_memory(3, 0)
    assert store.info()["memory_bytes"] <= store.max_memory_bytes


def _corrupt_one_chunk(group: Path) -> None:
    chunks = [p for p in (group / "features").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    data = bytearray(chunks[0].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    chunks[0].write_bytes(bytes(data))


def test_corrupt_chunk_is_detected_and_recomputed(tiny_model, tmp_path):
    stack = _stack(1)
    seg, _ = _segmenter(tiny_model, tmp_path)
    seg.set_image(stack, axes="zyx")
    good = seg.ensure_embedding().features.clone()
    _corrupt_one_chunk(_group(tmp_path))
    again, count = _segmenter(tiny_model, tmp_path)
    again.set_image(stack, axes="zyx")
    with pytest.warns(CacheWarning, match="corrupt"):
        emb = again.ensure_embedding()
    assert count.calls == 1
    torch.testing.assert_close(emb.features, good)
    third, count3 = _segmenter(tiny_model, tmp_path)  # the recomputed entry was written back
    third.set_image(stack, axes="zyx")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        third.ensure_embedding()
    assert count3.calls == 0


def test_corrupt_metadata_is_rebuilt(tiny_model, tmp_path):
    stack = _stack(1)
    seg, _ = _segmenter(tiny_model, tmp_path)
    seg.set_image(stack, axes="zyx")
    seg.ensure_embedding()
    (_group(tmp_path) / "zarr.json").write_text("{ not json")
    again, count = _segmenter(tiny_model, tmp_path)
    again.set_image(stack, axes="zyx")
    with pytest.warns(CacheWarning, match="metadata cannot be read"):
        again.ensure_embedding()
    assert count.calls == 1


@pytest.mark.parametrize("field, value", [("package_version", "0.0.0-old"), ("weights", "another-model")])
def test_store_from_another_version_or_model_is_recomputed(tiny_model, tmp_path, field, value):
    stack = _stack(1)
    seg, _ = _segmenter(tiny_model, tmp_path)
    seg.set_image(stack, axes="zyx")
    seg.ensure_embedding()
    meta_path = _group(tmp_path) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    attrs = meta["attributes"]["napari_sam_embeddings"]
    if field == "weights":
        attrs["signature"]["weights"] = value
    else:
        attrs[field] = value
    meta_path.write_text(json.dumps(meta))
    again, count = _segmenter(tiny_model, tmp_path)
    again.set_image(stack, axes="zyx")
    with pytest.warns(CacheWarning, match=field):
        again.ensure_embedding()
    assert count.calls == 1
    attrs = json.loads(meta_path.read_text())["attributes"]["napari_sam_embeddings"]
    assert value not in json.dumps(attrs)  # rebuilt with the current identity


def test_unwritable_cache_dir_warns_and_falls_back(tiny_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    seg, count = _segmenter(tiny_model, blocker / "cache")
    seg.set_image(_stack(1), axes="zyx")
    with pytest.warns(CacheWarning, match="cannot be written"):
        seg.ensure_embedding()
    assert count.calls == 1 and not seg.store.persistent and seg.has_embedding()
    strict = EmbeddingStore(blocker / "cache", on_error="raise")
    with pytest.raises(CacheError, match="cannot be written"):
        strict.open({}, 1, 1, (8, 4, 4), (4, 4), (4, 4))


def test_read_only_cache_with_entries_is_still_read(tiny_model, tmp_path, monkeypatch):
    stack = _stack(2)
    seg, _ = _segmenter(tiny_model, tmp_path)
    seg.set_image(stack, axes="zyx")
    seg.ensure_embedding(0)

    def read_only(self):
        self._problem(f"The embedding cache folder {self.cache_dir} cannot be written (read-only).")
        return False

    monkeypatch.setattr(EmbeddingStore, "_probe_writable", read_only)
    again, count = _segmenter(tiny_model, tmp_path)
    again.set_image(stack, axes="zyx")
    with pytest.warns(CacheWarning, match="cannot be written"):
        again.ensure_embedding(0)
    assert count.calls == 0 and again.store.persistent
    again.ensure_embedding(1)  # computed, kept in memory, nothing written
    assert count.calls == 1 and not (again.store.on_disk(1, 0))


def test_disk_full_during_write_falls_back_to_memory(tiny_model, tmp_path, monkeypatch):
    seg, count = _segmenter(tiny_model, tmp_path)
    seg.set_image(_stack(2), axes="zyx")
    seg.ensure_embedding(0)
    features = seg.store._group["features"]

    class Full:
        def __setitem__(self, key, value):
            raise OSError(28, "No space left on device")

    groups = {"features": Full(), "complete": seg.store._group["complete"]}
    monkeypatch.setattr(seg.store, "_group", groups)
    with pytest.warns(CacheWarning, match="No space left"):
        seg.ensure_embedding(1)
    assert seg.has_embedding(1) and not seg.store.persistent
    assert features is not None


_WORKER = r"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from napari_sam.model import build_sam
from napari_sam import Segmenter
from napari_sam.engine.progress import run_blocking
stack = np.load(sys.argv[1])
seg = Segmenter(model=build_sam("tiny", checkpoint=sys.argv[2]), cache_dir=sys.argv[3])
seg.set_image(stack, axes="zyx")
for p in seg.precompute():
    print(p.done, flush=True)
"""


def test_killed_precompute_resumes(tiny_model, tiny_checkpoint, tmp_path):
    stack = _stack(4, size=40)
    np.save(tmp_path / "stack.npy", stack)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(tmp_path / "stack.npy"), tiny_checkpoint, str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until at least one entry is complete, then kill without warning
            line = proc.stdout.readline()
            if not line or int(line.split()[0]) >= 1 or time.monotonic() > deadline:
                break
        proc.kill()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    seg, count = _segmenter(tiny_model, cache)
    seg.set_image(stack, axes="zyx")
    assert seg.cache_info()["group"] is not None, err
    before = seg.store.complete_mask()
    n_before = int(before.sum())
    assert 1 <= n_before < 4, f"the worker finished {n_before} slices before it was killed; its stderr: {err}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # a killed writer leaves nothing corrupt behind
        computed = run_all(seg)
    assert computed == 4 - n_before == count.calls
    assert seg.store.complete_mask().all()
    fresh, _ = _segmenter(tiny_model, tmp_path / "fresh")
    fresh.set_image(stack, axes="zyx")
    run_all(fresh)
    for i in range(4):
        torch.testing.assert_close(seg.store.get(i, 0).features, fresh.store.get(i, 0).features)


def run_all(seg: Segmenter) -> int:
    return run_blocking(seg.precompute())


def run_all_of(seg: Segmenter, slices) -> int:
    return run_blocking(seg.precompute(slices))


def test_precompute_cancel_keeps_finished_slices(tiny_model, tmp_path):
    seg, count = _segmenter(tiny_model, tmp_path)
    seg.set_image(_stack(4, size=32), axes="zyx")
    gen = seg.precompute()
    progress = [next(gen), next(gen), next(gen)]  # start, slice 0 done, slice 1 done
    gen.close()
    assert [p.done for p in progress] == [0, 1, 2] and progress[0].total == 4
    assert count.calls == 2
    again, count2 = _segmenter(tiny_model, tmp_path)
    again.set_image(_stack(4, size=32), axes="zyx")
    assert [again.has_embedding(i) for i in range(4)] == [True, True, False, False]
    assert run_all(again) == 2 and count2.calls == 2
    assert run_all(again) == 0


def test_tiled_stack_cache(tiny_model, tmp_path):
    stack = _stack(2, size=80)
    seg, count = _segmenter(tiny_model, tmp_path, tile_shape=(48, 48), halo=8)
    seg.set_image(stack, axes="zyx")
    n_tiles = len(seg.tile_grid)
    assert n_tiles == 4
    assert run_all_of(seg, [1]) == n_tiles == count.calls
    assert seg.has_embedding(1) and not seg.has_embedding(0)
    m1 = seg.segment(box=(10, 10, 70, 70), slice_index=1)  # spans all four tiles
    again, count2 = _segmenter(tiny_model, tmp_path, tile_shape=(48, 48), halo=8)
    again.set_image(stack, axes="zyx")
    np.testing.assert_array_equal(again.segment(box=(10, 10, 70, 70), slice_index=1), m1)
    tiled = again.ensure_embedding(1)  # every tile from disk
    assert isinstance(tiled, TiledEmbedding) and len(tiled.tiles) == n_tiles
    assert count2.calls == 0
    other, _ = _segmenter(tiny_model, tmp_path, tile_shape=(48, 48), halo=4)
    other.set_image(stack, axes="zyx")
    assert not other.has_embedding(1)  # another tiling is another group
