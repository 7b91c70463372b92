"""The command line's formats, indices and messages: the format the suffix names, the same inputs
everywhere, (row, col) errors, safe-loading refusals, cache failures, one-line errors, minimum sizes."""

from __future__ import annotations

import argparse
import errno
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.cli import main
from reference_models import two_disc_stack  # noqa: E402


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam: "), err
    return lines[0]


# ---- case 13: the format the suffix names; the same inputs everywhere ----------------------------------
def test_predict_writes_the_format_its_suffix_names(tmp_path, tiny_checkpoint, cells_image, capsys):
    from PIL import Image

    img, _ = cells_image
    tifffile.imwrite(tmp_path / "cells.tif", img)
    base = ["predict", str(tmp_path / "cells.tif"), "--point", "50", "60", "--model", tiny_checkpoint]
    for suffix in (".tif", ".png", ".npy"):
        assert main(base + ["--out", str(tmp_path / f"m{suffix}")]) == 0
    tif = tifffile.imread(tmp_path / "m.tif")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "m.png") as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png), tif)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), tif)
    assert tif.any() and set(np.unique(tif)) <= {0, 255}
    capsys.readouterr()
    for bad in ("m.jpg", "m.bmp", "m"):
        assert main(base + ["--out", str(tmp_path / bad)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert ".tif, .tiff, .png, .npy" in line
        assert not (tmp_path / bad).exists()


def test_segment_reads_png_and_jpeg_like_predict(tmp_path, otsu_model, capsys):
    from PIL import Image

    img, truth = two_disc_stack(1, (40, 48))
    grey = (img[0] / img.max() * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "in.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "in.jpg", quality=95)
    for name in ("in.png", "in.jpg"):
        out = tmp_path / f"{name}.labels.tif"
        assert main(["segment", str(tmp_path / name), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
        labels = tifffile.imread(out)
        assert labels.reshape(-1, 40, 48).shape[0] == 1 and labels.max() == 2


# ---- case 14: --slice takes a multi-index; (row, col) entry points speak in (row, col) --------------------
def test_predict_slice_takes_a_multi_index(tmp_path, tiny_checkpoint, capsys):
    from napari_sam import Segmenter

    stack, _ = two_disc_stack(6, (40, 48))
    data = stack.reshape(2, 3, 40, 48)
    data[1, 2] = np.roll(data[1, 2], 9, axis=1)  # a slice unlike the others
    tifffile.imwrite(tmp_path / "tz.tif", data, photometric="minisblack", metadata={"axes": "TZYX"})
    out = tmp_path / "m.tif"
    assert main(["predict", str(tmp_path / "tz.tif"), "--slice", "1,2", "--point", "20", "33",
                 "--out", str(out), "--model", tiny_checkpoint]) == 0
    seg = Segmenter(model=tiny_checkpoint)
    seg.set_image(data, axes="tzyx")
    np.testing.assert_array_equal(tifffile.imread(out) > 0, seg.segment(points=[(20, 33)], slice_index=(1, 2)))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "tz.tif"), "--slice", "1", "--point", "20", "33",
                 "--out", str(tmp_path / "n.tif"), "--model", tiny_checkpoint]) == 2
    assert "(2, 3)" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "tz.tif"), "--slice", "1;2", "--point", "1", "1", "--out", str(out)])


def test_rowcol_errors_speak_in_row_col(tiny_checkpoint):
    from napari_sam import Segmenter
    from napari_sam.errors import InvalidPromptError

    seg = Segmenter(model=tiny_checkpoint)
    seg.set_image(np.zeros((30, 80), np.uint8))
    with pytest.raises(InvalidPromptError, match=r"Point \(row=50, col=5\).*30 rows and 80 columns"):
        seg.segment(points=[(50, 5)])
    with pytest.raises(InvalidPromptError, match=r"row1 >= row0"):
        seg.segment(box=(20, 5, 10, 30))
    with pytest.raises(InvalidPromptError, match=r"\(row0, col0, row1, col1\).*outside"):
        seg.segment(box=(40, 5, 60, 30))


# ---- case 15: refusing unsafe files never advises unsafe loading ----------------------------------------
def test_unsafe_checkpoint_refusal_names_the_objects_and_the_export(tmp_path):
    from napari_sam.errors import CheckpointError
    from napari_sam.model.checkpoint import read_state_dict

    path = tmp_path / "training.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "argparse.Namespace" in msg and "state_dict" in msg
    assert "weights_only" not in msg and "can still be loaded" not in msg and "trust" not in msg


def _training_folders(tmp_path: Path) -> tuple[Path, Path]:
    from skimage.draw import disk

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    lab = np.zeros((64, 64), np.uint16)
    lab[disk((32, 32), 12)] = 1
    tifffile.imwrite(images / "a.tif", (lab * 200 + 20).astype(np.uint8))
    tifffile.imwrite(labels / "a.tif", lab)
    return images, labels


@pytest.mark.parametrize("state", ["garbage", "unsafe", "wrong_keys", "wrong_model"])
def test_train_resume_with_a_bad_state_file_is_one_clear_line(tmp_path, tiny_checkpoint, capsys, state):
    images, labels = _training_folders(tmp_path)
    out = tmp_path / "model.pt"
    sp = tmp_path / "model.pt.state.pt"
    if state == "garbage":
        sp.write_bytes(b"not a torch file")
    elif state == "unsafe":
        torch.save({"step": 1, "args": argparse.Namespace(x=1)}, sp)
    elif state == "wrong_keys":
        torch.save({"weights": torch.zeros(1)}, sp)
    else:
        torch.save({"step": 1, "model": {"w": torch.zeros(1)}, "optimizer": {}, "losses": []}, sp)
    rc = main(["train", "--images", str(images), "--labels", str(labels), "--out", str(out), "--resume",
               "--model", tiny_checkpoint, "--max-steps", "1", "--device", "cpu"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(sp) in line and "--overwrite" in line
    assert "weights_only" not in line


# ---- case 16: a cache that cannot be written stops embed without claiming to continue -------------------
def test_embed_into_an_unwritable_or_full_cache_fails_without_claiming_to_continue(
        tmp_path, tiny_checkpoint, capsys, monkeypatch):
    import zarr

    np.save(tmp_path / "img.npy", np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["embed", str(tmp_path / "img.npy"), "--cache", str(blocker / "c"),
                 "--model", tiny_checkpoint, "--quiet"]) == 2  # the folder cannot be created
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot be written" in line and "memory" not in line and "continu" not in line

    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    assert main(["embed", str(tmp_path / "img.npy"), "--cache", str(tmp_path / "cache"),
                 "--model", tiny_checkpoint, "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left" in line and "memory" not in line and "continu" not in line


# ---- every error is one line, non-zero -------------------------------------------------------------------
def test_unexpected_errors_are_one_line_and_non_zero(tmp_path, capsys, monkeypatch):
    from napari_sam.cli import sample

    def boom(args):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(sample, "run", boom)
    assert main(["sample", "cells", "--out", str(tmp_path / "x.tif")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "RuntimeError: first line; second line" in line and "NAPARI_SAM_DEBUG" in line

    def disk(args):
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "x.tif"))

    monkeypatch.setattr(sample, "run", disk)
    assert main(["sample", "cells", "--out", str(tmp_path / "x.tif")]) == 1
    assert "Permission denied" in _one_error_line(capsys.readouterr().err)


# ---- case 7: objects under a minimum size are left out; the demo reports what it measured ---------------
def test_paint_label_image_leaves_out_objects_under_min_area():
    from napari_sam.engine.automatic.label_image import paint_label_image

    big = np.ones((10, 10), bool)
    speck = np.ones((2, 2), bool)
    args = ([big, speck], [[0, 0, 9, 9], [20, 20, 21, 21]], [0.9, 0.95], (30, 30))
    assert paint_label_image(*args).max() == 2
    labels = paint_label_image(*args, min_area=5)
    assert labels.max() == 1 and (labels == 1).sum() == 100 and not labels[20:22, 20:22].any()


def test_segment_min_area_default_and_flag(tmp_path, otsu_model):
    from napari_sam.engine.automatic.label_image import MIN_OBJECT_AREA

    img, _ = two_disc_stack(1, (40, 48))
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack")
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "a.tif"), "--quiet"]) == 0
    assert otsu_model[-1].settings.min_mask_region_area == MIN_OBJECT_AREA > 0
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "b.tif"), "--min-area", "0",
                 "--quiet"]) == 0
    assert otsu_model[-1].settings.min_mask_region_area == 0


def _demo_report():
    path = Path(__file__).resolve().parents[1] / "scripts" / "demo_report.py"
    spec = importlib.util.spec_from_file_location("demo_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_reports_the_clicks_iou_not_the_clicked_one():
    report = _demo_report()
    truth = np.zeros((40, 40), np.int32)
    truth[2:10, 2:10], truth[2:10, 12:20], truth[12:20, 2:10], truth[12:20, 12:20] = 1, 2, 3, 4
    four = truth > 0
    line = report.click_report(truth, four, 5, 5)
    assert "IoU 0.25" in line and "covers 4 true nuclei" in line and "the clicked nucleus (64 px); " in line
    assert report.click_report(truth, truth == 1, 5, 5).endswith("the clicked nucleus")
    found = truth.copy()
    found[30, 30] = 9  # a speck
    assert "5 objects found" in report.automatic_report(truth, found)
    assert "under 64 px left out" in report.automatic_report(truth, truth, 64)
