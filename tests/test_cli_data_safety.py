"""Data safety of the command line: outputs never destroy inputs, failures leave resumable states,
files honour the umask, and nothing is created before everything is checked."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.cli import main
from reference_models import two_disc_stack  # noqa: E402


def _digest(path: Path) -> str:
    """A hash of every file under ``path`` (names and bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for f in files:
        h.update(str(f.relative_to(path) if Path(path).is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _write_stack(path: Path, n_z: int = 2) -> np.ndarray:
    img, _ = two_disc_stack(n_z, (40, 48))
    if path.suffix == ".zarr":  # a plain zarr array says nothing about its axes: give it enough slices
        if 2 <= n_z < 5:
            img = np.concatenate([img] * 3)
        zarr.save_array(str(path), img)
    else:
        tifffile.imwrite(path, img, photometric="minisblack", metadata={"axes": "ZYX"})
    return img


# ---- case 8: an output never is, contains or lies inside the input ---------------------------------
@pytest.mark.parametrize("case", ["same_zarr", "same_tiff", "symlink", "inside", "contains", "tiff_partial"])
def test_segment_refuses_outputs_overlapping_the_input(tmp_path, otsu_model, capsys, case):
    if case == "same_zarr":
        inp = tmp_path / "in.zarr"
        out = inp
    elif case == "same_tiff":
        inp = tmp_path / "in.tif"
        out = inp
    elif case == "symlink":
        inp = tmp_path / "in.zarr"
        out = tmp_path / "link.zarr"
        out.symlink_to(inp)
    elif case == "inside":
        inp = tmp_path / "in.zarr"
        out = inp / "labels.zarr"
    elif case == "contains":
        (tmp_path / "data.zarr").mkdir()
        inp = tmp_path / "data.zarr" / "in.tif"
        out = tmp_path / "data.zarr"
    else:  # the TIFF output's side-car group would be the input
        inp = tmp_path / "o.tif.partial.zarr"
        out = tmp_path / "o.tif"
    _write_stack(inp)
    before = _digest(inp)
    rc = main(["segment", str(inp), "--out", str(out), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "destroy the input" in err and len(err.strip().splitlines()) == 1
    assert _digest(inp) == before
    assert not otsu_model  # refused before anything was built


def test_predict_and_embed_refuse_to_write_over_the_input(tmp_path, tiny_checkpoint, capsys):
    inp = tmp_path / "in.tif"
    _write_stack(inp, 1)
    before = _digest(inp)
    rc = main(["predict", str(inp), "--out", str(inp), "--overwrite", "--point", "20", "20",
               "--model", tiny_checkpoint])
    assert rc == 2 and "destroy the input" in capsys.readouterr().err
    zin = tmp_path / "in.zarr"
    _write_stack(zin, 1)
    zbefore = _digest(zin)
    rc = main(["embed", str(zin), "--cache", str(zin / "cache"), "--model", tiny_checkpoint, "--quiet"])
    assert rc == 2 and "destroy the input" in capsys.readouterr().err
    assert _digest(inp) == before and _digest(zin) == zbefore


# ---- case 9: completion is marked after the final write; failures resume -----------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_final_tiff_write_then_rerun_finishes(tmp_path, otsu_model, capsys, monkeypatch):
    _write_stack(tmp_path / "in.tif", 3)
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.tif"), "--quiet"]
    with monkeypatch.context() as m:
        m.setattr(tifffile, "imwrite", _enospc)
        assert main(args) == 3
    err = capsys.readouterr().err
    assert "No space left" in err and "run the same command again" in err
    assert not (tmp_path / "out.tif").exists() and (tmp_path / "out.tif.partial.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tif")]  # no temp file left
    assert main(args) == 0  # space freed: the same command finishes the job
    assert "3 slices kept from an earlier run" in capsys.readouterr().out
    assert not (tmp_path / "out.tif.partial.zarr").exists()
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "fresh.tif"), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), tifffile.imread(tmp_path / "fresh.tif"))


def test_tiff_written_but_group_not_removed_is_finished_again(tmp_path, otsu_model, capsys, monkeypatch):
    from napari_sam.engine.batch import stack_store as batch

    _write_stack(tmp_path / "in.tif", 2)
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.tif"), "--quiet"]
    with monkeypatch.context() as m:
        m.setattr(batch, "_remove", _enospc)  # a crash right after the TIFF is in place
        assert main(args) == 1
    assert (tmp_path / "out.tif").exists() and (tmp_path / "out.tif.partial.zarr").exists()
    assert main(args) == 0
    assert not (tmp_path / "out.tif.partial.zarr").exists()


def test_finished_tiff_output_is_kept_by_the_same_command(tmp_path, otsu_model, capsys):
    _write_stack(tmp_path / "in.tif", 3)
    out = tmp_path / "out.tif"
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (3, 40, 48) and labels.dtype == np.int32 and labels.max() == 2
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # a rerun (e.g. a cluster job list run again) keeps the finished TIFF
    assert "2 objects in 3 slices" in (said := capsys.readouterr().out) and "finished by an earlier run, kept" in said
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]  # no partial group, no temp file
    assert main(args + ["--link-iou", "0.5"]) == 2  # another job: refused, untouched
    assert "different job" in (err := capsys.readouterr().err) and "--overwrite" in err
    assert out.read_bytes() == before
    assert main(args + ["--link-iou", "0.5", "--overwrite"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), labels)  # same labels, now another job's record


def _not_ours(path: Path, labels: np.ndarray, case: str) -> None:
    """Write at ``path`` a TIFF that is not a finished napari-sam output of the job."""
    good = path.read_bytes()
    if case == "no record":  # a user's own file, or one written before outputs carried their job
        tifffile.imwrite(path, labels, photometric="minisblack", compression="zlib")
    elif case == "unparsable record":
        tifffile.imwrite(path, labels, photometric="minisblack", description='{"napari_sam_job": {"job": [',
                         metadata=None)
    elif case == "truncated":
        path.write_bytes(good[: len(good) - 40])
    elif case == "not a tiff":
        path.write_bytes(b"II*\x00" + b"\xff" * 64)


@pytest.mark.parametrize("case, message", [
    ("no record", "carries no job record"),
    ("unparsable record", "its job record cannot be read"),
    ("truncated", "runs past the end of the file"),
    ("not a tiff", "cannot be read as a TIFF"),
])
def test_tiff_output_without_a_readable_record_is_refused_not_overwritten(tmp_path, otsu_model, capsys, case,
                                                                           message):
    _write_stack(tmp_path / "in.tif", 3)
    out = tmp_path / "out.tif"
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    _not_ours(out, tifffile.imread(out), case)
    before = out.read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "--overwrite" in err, err
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]
    assert main(args + ["--overwrite"]) == 0 and tifffile.imread(out).shape == (3, 40, 48)


def test_disk_full_while_creating_the_output_leaves_nothing(tmp_path, otsu_model, capsys, monkeypatch):
    _write_stack(tmp_path / "in.tif", 2)
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.zarr"), "--quiet"]
    with monkeypatch.context() as m:
        m.setattr(zarr.Group, "create_array", _enospc)
        assert main(args) == 3
    assert "Nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()
    assert main(args) == 0


def test_killed_while_creating_the_output_is_completed_by_the_rerun(tmp_path, otsu_model, capsys, monkeypatch):
    _write_stack(tmp_path / "in.tif", 2)
    args = ["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.zarr"), "--quiet"]
    real = zarr.Group.create_array
    calls = []

    def killed_after_first(self, *a, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(zarr.Group, "create_array", killed_after_first)
        assert main(args) == 130
    assert (tmp_path / "o.zarr").exists()
    assert main(args) == 0, capsys.readouterr().err
    assert int(np.asarray(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["labels"]).max()) == 2


# ---- case 11: everything is checked before any output exists ------------------------------------------
def test_model_typo_creates_nothing_and_suggests_the_name(tmp_path, otsu_model, capsys):
    _write_stack(tmp_path / "in.tif", 2)
    out = tmp_path / "out.tif"
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(out), "--model", "vit_bb", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'vit_b'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    # the corrected command is not "a different job": nothing was left behind
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(out), "--model", "VIT_B", "--quiet"]) == 0
    assert otsu_model[-1].model == "VIT_B"


def test_predict_model_typo_writes_nothing(tmp_path, capsys):
    _write_stack(tmp_path / "in.tif", 1)
    rc = main(["predict", str(tmp_path / "in.tif"), "--out", str(tmp_path / "m.tif"), "--point", "20", "20",
               "--model", "tinny"])
    assert rc == 2 and "Did you mean 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "m.tif").exists()


# ---- case 12: outputs honour the umask ----------------------------------------------------------------
@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_honour_the_umask(tmp_path, tiny_checkpoint, otsu_model, umask):
    want = 0o666 & ~umask
    assert main(["sample", "cells", "--out", str(tmp_path / "cells.tif")]) == 0
    assert _mode(tmp_path / "cells.tif") == want and _mode(tmp_path / "cells_labels.tif") == want
    assert main(["segment", str(tmp_path / "cells.tif"), "--out", str(tmp_path / "labels.tif"), "--quiet"]) == 0
    assert _mode(tmp_path / "labels.tif") == want
    for suffix in (".tif", ".png", ".npy"):
        out = tmp_path / f"mask{suffix}"
        assert main(["predict", str(tmp_path / "cells.tif"), "--out", str(out), "--point", "60", "60",
                     "--model", tiny_checkpoint]) == 0
        assert _mode(out) == want, suffix


# ---- case 14: a missing output folder is refused, not created ------------------------------------------
def test_missing_output_folder_is_refused_not_created(tmp_path, tiny_checkpoint, otsu_model, capsys):
    _write_stack(tmp_path / "in.tif", 1)
    missing = tmp_path / "missing_dir"
    for argv in (["predict", str(tmp_path / "in.tif"), "--out", str(missing / "x.tif"), "--point", "20", "20",
                  "--model", tiny_checkpoint],
                 ["segment", str(tmp_path / "in.tif"), "--out", str(missing / "x.tif"), "--quiet"],
                 ["segment", str(tmp_path / "in.tif"), "--out", str(missing / "x.zarr"), "--quiet"],
                 ["sample", "cells", "--out", str(missing / "x.tif")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "does not exist" in err and "create it first" in err
        assert not missing.exists()


def test_model_names_are_case_insensitive_and_typos_get_suggestions():
    from napari_sam.engine.models.zoo import check_model, get_entry, load_model
    from napari_sam.errors import CheckpointError, UnknownModelError

    assert get_entry("ViT_B").name == "vit_b"
    assert load_model("TINY", device="cpu").image_encoder.img_size == load_model("tiny", device="cpu").image_encoder.img_size
    with pytest.raises(UnknownModelError, match=r"Did you mean 'vit_b_lm'"):
        get_entry("vit_b_ml")
    with pytest.raises(UnknownModelError) as info:
        check_model("zzzz")
    assert "Did you mean" not in str(info.value) and "Known models" in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        check_model("missing/model.pt")
