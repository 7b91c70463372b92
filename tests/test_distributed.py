"""Batch stack jobs on a dask.distributed LocalCluster (2 worker processes)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

distributed = pytest.importorskip("distributed")

from napari_sam.engine.automatic import slice_segmenter  # noqa: E402
from napari_sam.engine.automatic.settings import AutoSettings  # noqa: E402
from napari_sam.engine.batch.run import open_labels, segment_stack, segment_stack_blocking  # noqa: E402
from napari_sam.engine.batch.stack_store import write_slice  # noqa: E402
from napari_sam.engine.automatic.slice_segmenter import SliceSegmenterSpec, build_cached, otsu_labels  # noqa: E402
from reference_models import two_disc_stack  # noqa: E402


def _stack(n_z=6, shape=(40, 48)):
    return two_disc_stack(n_z, shape)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


def test_cluster_result_equals_local_result(tmp_path, client):
    img, truth = _stack()
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack")
    local = segment_stack_blocking(tmp_path / "in.tif", tmp_path / "local.zarr", segment_slice=otsu_labels)
    steps = []
    remote = segment_stack_blocking(tmp_path / "in.tif", tmp_path / "remote.zarr", segment_slice=otsu_labels,
                                    client=client, callback=steps.append)
    np.testing.assert_array_equal(open_labels(remote.path)[:], open_labels(local.path)[:])
    assert remote.n_objects == local.n_objects == 2
    seg_steps = [p for p in steps if p.message.startswith("segmented")]
    assert sorted(int(p.message.split()[-1]) for p in seg_steps) == list(range(6))
    # in-memory input: the slices travel with the tasks; TIFF output
    mem = segment_stack_blocking(img, tmp_path / "mem.tif", segment_slice=otsu_labels, client=client)
    np.testing.assert_array_equal(tifffile.imread(mem.path), open_labels(local.path)[:])


def test_cancelled_cluster_run_resumes_without_losing_or_repeating_slices(tmp_path, client):
    img, _ = _stack(8)
    out = tmp_path / "o.zarr"
    gen = segment_stack(img, out, segment_slice=otsu_labels, client=client)
    next(gen)  # "segmenting"
    next(gen)  # one slice finished
    gen.close()  # cancel: unfinished tasks are cancelled, finished slices stay
    done = zarr.open_group(str(out), mode="r")["done"][:]
    assert 1 <= done.sum() <= 8
    r = segment_stack_blocking(img, out, segment_slice=otsu_labels, client=client)
    # tasks already running when cancelled may still finish: at least the slices seen done are kept
    assert 8 > r.resumed_slices >= int(done.sum()) or r.resumed_slices == 8
    ref = segment_stack_blocking(img, tmp_path / "ref.zarr", segment_slice=otsu_labels)
    np.testing.assert_array_equal(open_labels(out)[:], open_labels(ref.path)[:])


def test_lost_worker_task_is_rerun(tmp_path, client):
    """A worker process dies in the middle of a slice: the task is re-run elsewhere; nothing lost or doubled."""
    import os
    from pathlib import Path

    img, _ = _stack(6)
    marker = tmp_path / "crashed-once"

    def crash_once(image):  # a closure: cloudpickle ships it by value to the workers
        if np.array_equal(image, img[3]) and not Path(marker).exists():
            Path(marker).touch()
            os._exit(1)  # kill this worker process mid-task
        return otsu_labels(image)

    r = segment_stack_blocking(img, tmp_path / "lost.zarr", segment_slice=crash_once, client=client)
    assert marker.exists()
    g = zarr.open_group(str(r.path), mode="r")
    assert list(g["done"][:]) == [1] * 6
    ref = segment_stack_blocking(img, tmp_path / "ref.zarr", segment_slice=otsu_labels)
    np.testing.assert_array_equal(open_labels(r.path)[:], open_labels(ref.path)[:])


def test_slice_write_is_idempotent(tmp_path):
    img, _ = _stack(2)
    out = tmp_path / "i.zarr"
    segment_stack_blocking(img, out, segment_slice=otsu_labels, axes="zyx")
    g = zarr.open_group(str(out), mode="r")
    before = g["slices"][:]
    write_slice(str(out), 1, before[1])  # a re-run task writes the same whole slice again
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["slices"][:], before)


def test_spec_built_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(SliceSegmenterSpec, "build", lambda self: calls.append(self) or otsu_labels)
    slice_segmenter._CACHE.clear()
    spec = SliceSegmenterSpec(model="x", settings=AutoSettings(points_per_side=4))
    assert build_cached(spec) is build_cached(SliceSegmenterSpec(model="x", settings=AutoSettings(points_per_side=4)))
    build_cached(SliceSegmenterSpec(model="x", settings=AutoSettings(points_per_side=8)))
    assert len(calls) == 2
    slice_segmenter._CACHE.clear()


@pytest.mark.slow
def test_workers_load_the_tiny_model_once(tmp_path, client, tiny_checkpoint):
    """Real SAM on the workers: each worker process loads the model at most once for all its slices."""
    pytest.importorskip("napari_sam.engine.automatic.amg")
    img, _ = _stack(4, shape=(32, 32))
    r = segment_stack_blocking(img, tmp_path / "t.zarr", model=tiny_checkpoint, device="cpu",
                               settings=AutoSettings(points_per_side=4), client=client)
    assert open_labels(r.path).shape == (4, 32, 32)
    counts = client.run(lambda: len(__import__("napari_sam.engine.automatic.slice_segmenter").engine.automatic.slice_segmenter._CACHE))
    assert sum(counts.values()) <= 2 and all(v <= 1 for v in counts.values())
