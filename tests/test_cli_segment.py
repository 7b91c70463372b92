"""The ``napari-sam segment`` command."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.cli import main
from napari_sam.engine.batch.run import open_labels
from reference_models import two_disc_stack  # noqa: E402


def _stack(n_z=4, shape=(40, 48)):
    return two_disc_stack(n_z, shape)


def test_tiff_in_tiff_out(tmp_path, otsu_model, capsys):
    img, truth = _stack()
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    rc = main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.tif"), "--points-per-side", "8",
               "--quiet"])
    assert rc == 0
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == truth.shape and out.dtype == np.int32 and len(np.unique(out)) == 3
    assert "2 objects in 4 slices" in capsys.readouterr().out
    assert otsu_model[0].settings.points_per_side == 8 and otsu_model[0].intensity_limits is not None


def test_zarr_in_zarr_out_2d_and_tile(tmp_path, otsu_model):
    img, _ = _stack(1)
    zarr.save_array(str(tmp_path / "in.zarr"), img[0])
    rc = main(["segment", str(tmp_path / "in.zarr"), "--out", str(tmp_path / "o.zarr"), "--tile", "64", "64",
               "--quiet"])
    assert rc == 0
    labels = open_labels(tmp_path / "o.zarr")
    assert labels.shape == (1, 40, 48) and int(np.asarray(labels).max()) == 2
    assert otsu_model[0].settings.tile_shape == (64, 64) and otsu_model[0].settings.halo == (8, 8)


def test_finished_output_kept_other_job_refused_and_overwrite(tmp_path, otsu_model, capsys):
    img, _ = _stack(2)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.zarr"), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0  # the same command again: the finished output is kept and reported
    assert "2 objects in 2 slices" in (out := capsys.readouterr().out) and "finished by an earlier run, kept" in out
    assert main(args + ["--link-iou", "0.5"]) == 2  # another job on it: refused
    err = capsys.readouterr().err
    assert "exists" in err and "different job" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
    assert "earlier run" not in capsys.readouterr().out


def test_interrupted_zarr_output_resumes(tmp_path, otsu_model, capsys, monkeypatch):
    img, _ = _stack(4)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.zarr"), "--quiet"]
    from napari_sam.engine.batch import stack_store as batch

    real = batch.write_slice

    def crash(group_path, z, labels, pixels=None):
        if z == 2:
            raise KeyboardInterrupt
        real(group_path, z, labels, pixels)

    monkeypatch.setattr(batch, "write_slice", crash)
    assert main(args) == 130
    monkeypatch.setattr(batch, "write_slice", real)
    capsys.readouterr()
    assert main(args) == 0
    assert "2 slices kept from an earlier run" in capsys.readouterr().out
    # a different job (other settings) on the unfinished output would be refused, not mixed
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert list(g["done"][:]) == [1, 1, 1, 1]


def test_bad_arguments(tmp_path, otsu_model, capsys):
    assert main(["segment", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "o.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    img, _ = _stack(1)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.png")]) == 2
    assert ".zarr, .tif" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.tif"),
                 "--points-per-side", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path / "in.tif")])  # --out is required


def test_write_error_exit_code_and_message(tmp_path, otsu_model, capsys, monkeypatch):
    from napari_sam.engine.batch import stack_store as batch
    from napari_sam.errors import BatchWriteError

    img, _ = _stack(3)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})

    def failing(group_path, z, labels, pixels=None):
        raise BatchWriteError(f"Writing slice {z} to {group_path} failed: read-only file system")

    monkeypatch.setattr(batch, "write_slice", failing)
    rc = main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.zarr"), "--quiet"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "read-only" in err and "intact: none" in err


def test_real_tiny_model(tmp_path, tiny_checkpoint, capsys):
    pytest.importorskip("napari_sam.engine.automatic.amg")
    img, _ = _stack(2)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    rc = main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.tif"), "--model", tiny_checkpoint,
               "--device", "cpu", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh",
               "0", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = tifffile.imread(tmp_path / "o.tif")
    assert out.shape == (2, 40, 48) and out.dtype == np.int32
