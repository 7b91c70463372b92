"""Batch stack segmentation: linking, zarr/TIFF output, resume, overwrite refusal, write errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.engine.batch import stack_store as batch
from napari_sam.engine.batch.run import open_labels, segment_stack, segment_stack_blocking
from napari_sam.engine.progress import run_blocking
from napari_sam.engine.automatic.settings import AutoSettings
from napari_sam.engine.automatic.slice_segmenter import otsu_labels, tiled
from napari_sam.engine.volumes.stack_linking import iou_matrix, link_stack, match_instances
from napari_sam.errors import BatchWriteError, InvalidImageError, InvalidOutputError, OutputExistsError


def _blob_stack(n_z: int = 8, shape=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Two ellipsoid-ish objects drifting through z, plus one that appears only in the top half."""
    from skimage.draw import disk

    truth = np.zeros((n_z, *shape), np.int32)
    for z in range(n_z):
        rr, cc = disk((14 + z, 15), 8, shape=shape)
        truth[z, rr, cc] = 1
        rr, cc = disk((30, 44 - z), 9, shape=shape)
        truth[z, rr, cc] = 2
        if z >= n_z // 2:
            rr, cc = disk((40, 12), 5, shape=shape)
            truth[z, rr, cc] = 3
    rng = np.random.default_rng(0)
    img = (truth > 0) * 1000.0 + 100 + rng.normal(0, 20, truth.shape)
    return img.astype(np.uint16), truth


def _same_partition(a: np.ndarray, b: np.ndarray, min_iou: float = 0.9) -> bool:
    """True if label volumes a and b have the same objects (one-to-one, IoU >= min_iou) up to renaming."""
    ids_a, ids_b = np.unique(a[a > 0]), np.unique(b[b > 0])
    if len(ids_a) != len(ids_b):
        return False
    for i in ids_a:
        m = a == i
        j = np.bincount(b[m]).argmax()
        if j == 0:
            return False
        n = b == j
        if (m & n).sum() / (m | n).sum() < min_iou:
            return False
    return True


def _fixed_threshold(image: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return label(np.asarray(image) > 600).astype(np.int32)


# ---- linking ------------------------------------------------------------------------------------
def test_iou_matrix_values():
    a = np.zeros((4, 4), int)
    b = np.zeros((4, 4), int)
    a[:2, :2] = 5
    b[:2, :1] = 7
    b[3, 3] = 9
    pid, cid, iou = iou_matrix(a, b)
    assert list(pid) == [5] and list(cid) == [7, 9]
    np.testing.assert_allclose(iou, [[0.5, 0.0]])


def test_link_stack_recovers_3d_objects_from_shuffled_slice_ids():
    _, truth = _blob_stack()
    rng = np.random.default_rng(1)
    local = np.zeros_like(truth)
    for z in range(truth.shape[0]):  # renumber each slice's ids at random
        perm = np.concatenate([[0], rng.permutation(np.arange(1, 50))])
        local[z] = perm[truth[z]]
    linked = link_stack(local)
    assert linked.dtype == np.int32
    assert _same_partition(linked, truth)
    assert len(np.unique(linked)) - 1 == 3


def test_linking_threshold_and_one_to_one():
    prev = np.zeros((10, 10), int)
    prev[0:4, 0:4] = 1
    cur = np.zeros((10, 10), int)
    cur[0:4, 0:2] = 1  # IoU 0.5 with prev 1
    cur[0:4, 2:4] = 2  # IoU 0.5 too: split, only one may continue
    m = match_instances(prev, cur, iou_threshold=0.3)
    assert len(m) == 1 and list(m.values()) == [1]
    assert match_instances(prev, cur, iou_threshold=0.6) == {}
    # an object that disappears for a slice gets a new id when it returns
    stack = np.stack([prev, np.zeros_like(prev), prev])
    linked = link_stack(stack)
    assert linked[0].max() == 1 and linked[2].max() == 2


# ---- batch runs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_segment_stack_writes_linked_labels(tmp_path, suffix):
    img, truth = _blob_stack()
    out = tmp_path / f"labels{suffix}"
    steps = []
    result = segment_stack_blocking(img, out, segment_slice=otsu_labels, callback=steps.append)
    assert result.path == out and result.n_slices == 8 and result.resumed_slices == 0
    assert result.n_objects == 3
    labels = np.asarray(open_labels(out)[:])
    assert labels.shape == truth.shape and labels.dtype == np.int32
    assert _same_partition(labels, truth)
    assert [p.done for p in steps if p.message.startswith("segmented")] == list(range(1, 9))
    if suffix == ".tif":
        assert not (tmp_path / "labels.tif.partial.zarr").exists()
        assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]
    else:
        g = zarr.open_group(str(out), mode="r")
        assert g.attrs["napari_sam_job"]["complete"] is True
        assert g["labels"].chunks == (1, 48, 64)


def test_segment_stack_reads_tiff_and_zarr_paths(tmp_path):
    img, truth = _blob_stack(4)
    tifffile.imwrite(tmp_path / "in.tif", img, imagej=True, metadata={"axes": "ZYX"})  # the file says: slices
    zarr.save_array(str(tmp_path / "in.zarr"), img)
    a = run_blocking(segment_stack(tmp_path / "in.tif", tmp_path / "a.zarr", segment_slice=otsu_labels))
    b = run_blocking(segment_stack(str(tmp_path / "in.zarr"), tmp_path / "b.zarr", segment_slice=otsu_labels,
                                 axes="zyx"))
    np.testing.assert_array_equal(open_labels(a.path)[:], open_labels(b.path)[:])
    assert _same_partition(np.asarray(open_labels(a.path)[:]), truth[:4])


def test_2d_input_is_one_slice_and_bad_inputs(tmp_path):
    img, truth = _blob_stack(1)
    r = segment_stack_blocking(img[0], tmp_path / "one.zarr", segment_slice=otsu_labels)
    assert open_labels(r.path).shape == (1, 48, 64) and r.n_objects == 3
    with pytest.raises(InvalidImageError, match="empty"):
        segment_stack_blocking(np.zeros((0, 10, 10)), tmp_path / "e.zarr", segment_slice=otsu_labels)
    with pytest.raises(InvalidImageError, match="does not exist"):
        segment_stack_blocking(tmp_path / "nope.tif", tmp_path / "n.zarr", segment_slice=otsu_labels)
    with pytest.raises(InvalidImageError, match="z-stack"):
        segment_stack_blocking(np.zeros((6, 6, 5, 5, 5)), tmp_path / "x.zarr", segment_slice=otsu_labels)
    with pytest.raises(InvalidOutputError, match=".zarr, .tif"):
        segment_stack_blocking(img, tmp_path / "x.png", segment_slice=otsu_labels, axes="zyx")


def test_existing_output_refused_unless_overwrite(tmp_path):
    img, _ = _blob_stack(3)
    for name in ("o.zarr", "o.tif"):
        segment_stack_blocking(img, tmp_path / name, segment_slice=otsu_labels, axes="zyx")
        with pytest.raises(OutputExistsError, match="overwrite"):
            segment_stack_blocking(img, tmp_path / name, segment_slice=otsu_labels, axes="zyx")
        r = segment_stack_blocking(img, tmp_path / name, segment_slice=otsu_labels, axes="zyx", overwrite=True)
        assert r.resumed_slices == 0
    # a zarr that is not ours, and an unfinished output of a different job
    zarr.save_array(str(tmp_path / "foreign.zarr"), np.zeros(3))
    with pytest.raises(OutputExistsError, match="not a napari-sam output"):
        segment_stack_blocking(img, tmp_path / "foreign.zarr", segment_slice=otsu_labels, axes="zyx")
    gen = segment_stack(img, tmp_path / "p.zarr", segment_slice=otsu_labels, axes="zyx")
    next(gen), next(gen)
    gen.close()
    with pytest.raises(OutputExistsError, match="different job"):
        segment_stack_blocking(img + 1, tmp_path / "p.zarr", segment_slice=otsu_labels, axes="zyx")


@pytest.mark.parametrize("name", ["o.zarr", "o.tif"])
def test_keep_finished_keeps_a_finished_output_of_the_same_job(tmp_path, name):
    img, truth = _blob_stack(3)
    out = tmp_path / name
    first = segment_stack_blocking(img, out, segment_slice=otsu_labels, axes="zyx")
    assert not first.kept
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in [out, *out.rglob("*")] if p.is_file()}
    r = segment_stack_blocking(img, out, segment_slice=otsu_labels, axes="zyx", keep_finished=True)
    assert r.kept and (r.n_objects, r.n_slices, r.resumed_slices) == (first.n_objects, 3, 3)
    assert files == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}  # not rewritten
    assert _same_partition(np.asarray(open_labels(out)[:]), truth[:3])
    with pytest.raises(OutputExistsError, match="different job"):  # another input on it: still refused
        segment_stack_blocking(img + 1, out, segment_slice=otsu_labels, axes="zyx", keep_finished=True)


class _Counting:
    """A stand-in slice segmenter that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return otsu_labels(image)


@pytest.mark.parametrize("suffix", [".zarr", ".tiff"])
def test_resume_after_interruption_skips_finished_slices(tmp_path, suffix):
    img, truth = _blob_stack(8)
    out = tmp_path / f"r{suffix}"
    first = _Counting()
    gen = segment_stack(img, out, segment_slice=first)
    for p in gen:  # cancel after 3 segmented slices
        if p.message.startswith("segmented") and p.done == 3:
            break
    gen.close()
    assert first.calls == 3
    assert not out.exists() if suffix == ".tiff" else True
    # the job record must match: same callable class/module and input
    second = _Counting()
    steps = []
    r = segment_stack_blocking(img, out, segment_slice=second, callback=steps.append)
    assert r.resumed_slices == 3 and second.calls == 5
    assert steps[0].done == 3 and "resuming" in steps[0].message
    assert _same_partition(np.asarray(open_labels(out)[:]), truth)


def test_write_error_mid_run_reports_intact_slices(tmp_path, monkeypatch):
    img, _ = _blob_stack(6)
    out = tmp_path / "w.zarr"
    real = batch.write_slice

    def failing(group_path, z, labels, pixels=None):
        if z == 4:
            raise BatchWriteError(f"Writing slice {z} to {group_path} failed: [Errno 28] No space left on device")
        real(group_path, z, labels, pixels)

    monkeypatch.setattr(batch, "write_slice", failing)
    with pytest.raises(BatchWriteError, match=r"slice 4.*No space.*intact: 0-3") as info:
        segment_stack_blocking(img, out, segment_slice=otsu_labels)
    assert info.value.done_slices == [0, 1, 2, 3]
    g = zarr.open_group(str(out), mode="r")
    assert list(g["done"][:]) == [1, 1, 1, 1, 0, 0]
    assert (g["slices"][3] > 0).any()
    monkeypatch.setattr(batch, "write_slice", real)
    r = segment_stack_blocking(img, out, segment_slice=otsu_labels)
    assert r.resumed_slices == 4


def test_real_os_error_from_zarr_becomes_batch_write_error(tmp_path, monkeypatch):
    img, _ = _blob_stack(3)
    out = tmp_path / "os.zarr"
    orig = zarr.Array.__setitem__

    def setitem(self, key, value):
        if self.shape == (3, 48, 64) and key == 2:
            raise PermissionError(13, "Permission denied", str(out))
        return orig(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)
    with pytest.raises(BatchWriteError, match="Permission denied.*intact: 0-1") as info:
        segment_stack_blocking(img, out, segment_slice=otsu_labels, axes="zyx")
    assert info.value.done_slices == [0, 1]


def test_tiled_stitches_objects_cut_by_tile_borders():
    img, truth = _blob_stack(1, shape=(64, 64))
    whole = _fixed_threshold(img[0])
    cut = tiled(_fixed_threshold, (20, 24))(img[0])
    assert len(np.unique(whole)) == len(np.unique(cut)) == 4  # 3 objects + background
    assert _same_partition(cut, whole, min_iou=1.0)
    assert _same_partition(cut, truth[0])
    with pytest.raises(ValueError, match="positive"):
        tiled(otsu_labels, (0, 5))


def test_real_amg_on_tiny_model(tmp_path, tiny_checkpoint):
    """The default SAM slice segmenter end to end (random weights: checks shapes and plumbing)."""
    pytest.importorskip("napari_sam.engine.automatic.amg")
    img, _ = _blob_stack(2, shape=(40, 48))
    r = segment_stack_blocking(img, tmp_path / "amg.zarr", model=tiny_checkpoint, device="cpu", axes="zyx",
                               settings=AutoSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    labels = open_labels(r.path)
    assert labels.shape == (2, 40, 48) and labels.dtype == np.int32
    job = zarr.open_group(str(r.path), mode="r").attrs["napari_sam_job"]["job"]
    assert job["segmenter"]["kind"] == "sam-amg" and job["segmenter"]["points_per_side"] == 4
