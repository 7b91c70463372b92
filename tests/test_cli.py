"""The command line: predict and models sub-commands."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_sam.cli import main


def test_predict_writes_mask(tmp_path, tiny_checkpoint, cells_image, monkeypatch):
    img, _ = cells_image
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, img)
    out = tmp_path / "mask.tif"
    rc = main(["predict", str(src), "--out", str(out), "--point", "50", "60", "--negative", "140", "80",
               "--model", tiny_checkpoint])
    assert rc == 0
    mask = tifffile.imread(out)
    assert mask.shape == img.shape and set(np.unique(mask)) <= {0, 255}

    from napari_sam import Segmenter

    seg = Segmenter(model=tiny_checkpoint)
    seg.set_image(img)
    expected = seg.segment(points=[(50, 60), (140, 80)], labels=[1, 0])
    np.testing.assert_array_equal(mask > 0, expected)


def test_predict_refuses_existing_output_and_bad_input(tmp_path, tiny_checkpoint, cells_image, capsys):
    img, _ = cells_image
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, img)
    out = tmp_path / "mask.tif"
    out.write_bytes(b"keep me")
    rc = main(["predict", str(src), "--out", str(out), "--point", "5", "5", "--model", tiny_checkpoint])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    rc = main(["predict", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x.tif"), "--point", "5", "5",
               "--model", tiny_checkpoint])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = main(["predict", str(src), "--out", str(tmp_path / "y.tif"), "--point", "5000", "5",
               "--model", tiny_checkpoint])
    assert rc == 2 and "outside" in capsys.readouterr().err
    assert not (tmp_path / "y.tif").exists()


def test_predict_with_the_bundled_model_says_what_it_is(tmp_path, tiny_checkpoint, cells_image, capsys):
    from napari_sam.engine.models.auto_defaults import TINY_NOTE

    img, _ = cells_image
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, img)
    assert main(["predict", str(src), "--out", str(tmp_path / "a.tif"), "--point", "50", "60"]) == 0
    assert capsys.readouterr().err.count(TINY_NOTE) == 1  # no --model: the bundled tiny
    assert main(["predict", str(src), "--out", str(tmp_path / "b.tif"), "--point", "50", "60",
                 "--model", tiny_checkpoint]) == 0
    assert TINY_NOTE not in capsys.readouterr().err


def test_models_lists_zoo(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vit_b" in out and "vit_h" in out and str(tmp_path) in out


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "napari_sam", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "napari-sam" in r.stdout
