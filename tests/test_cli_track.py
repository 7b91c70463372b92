"""The ``napari-sam track`` command and ``track_sequence``: SAM 2.1 memory through a time-lapse, resumable, safe."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.cli import main
from napari_sam.engine.batch.run import open_labels
from test_memory_propagation import drifting_cells

SIZE = 64


@pytest.fixture(scope="module")
def sam2_file(tmp_path_factory):
    """A random SAM 2.1 hiera_tiny checkpoint written as Meta publishes them ({'model': state})."""
    from sam2_state import perturbed_sam2_state

    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_random_tiny.pt"
    torch.save({"model": perturbed_sam2_state("sam2.1_hiera_tiny")}, path)
    return path


@pytest.fixture
def small_sam2(monkeypatch):
    """Load SAM 2.1 files at a small input size (no parameter depends on it): fast tests."""
    from napari_sam.engine.models import zoo
    from napari_sam.model.sam2 import build_sam2

    def build(state, model_type, source, device, image_size=None):
        return build_sam2(model_type or "sam2.1_hiera_tiny", state, image_size=SIZE)

    monkeypatch.setattr(zoo, "_build_sam2", build)
    torch.set_num_threads(1)


def _files(tmp_path, t_n=6, seed_frame=2):
    frames, labels = drifting_cells(t_n)
    tifffile.imwrite(tmp_path / "movie.tif", frames, photometric="minisblack", metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "seeds.tif", labels[seed_frame])
    return frames, labels


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_track_a_time_lapse_from_the_command_line(tmp_path, sam2_file, small_sam2, capsys):
    frames, labels = _files(tmp_path)
    before = {p: _digest(tmp_path / p) for p in ("movie.tif", "seeds.tif")}
    rc = main(["track", str(tmp_path / "movie.tif"), "--seeds", str(tmp_path / "seeds.tif"), "--seed-frame", "2",
               "--out", str(tmp_path / "tracks.tif"), "--model", str(sam2_file), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = tifffile.imread(tmp_path / "tracks.tif")
    assert out.shape == frames.shape and out.dtype == np.int32
    assert np.array_equal(out[2], labels[2])  # the seed frame as drawn
    assert set(np.unique(out)) <= {0, 1, 2} and all((out[t] > 0).any() for t in range(6))
    assert "2 objects tracked through 6 frames" in capsys.readouterr().out
    assert before == {p: _digest(tmp_path / p) for p in ("movie.tif", "seeds.tif")}  # inputs untouched
    assert not (tmp_path / "tracks.tif.partial.zarr").exists()
    # finished: the same command again keeps the TIFF as it is (its job record says it is this job's)
    args = ["track", str(tmp_path / "movie.tif"), "--seeds", str(tmp_path / "seeds.tif"), "--seed-frame", "2",
            "--out", str(tmp_path / "tracks.tif"), "--model", str(sam2_file), "--quiet"]
    kept = (tmp_path / "tracks.tif").read_bytes(), (tmp_path / "tracks.tif").stat().st_mtime_ns
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "2 objects tracked through 6 frames" in said and "finished by an earlier run, kept" in said
    assert kept == ((tmp_path / "tracks.tif").read_bytes(), (tmp_path / "tracks.tif").stat().st_mtime_ns)
    # another job (other seed frame) on it is refused and leaves it untouched; --overwrite replaces
    other = [a if a != "2" else "3" for a in args]
    assert main(other) == 2 and "different job" in (err := capsys.readouterr().err) and "--overwrite" in err
    assert kept[0] == (tmp_path / "tracks.tif").read_bytes()
    assert main(other + ["--overwrite"]) == 0 and "earlier run" not in capsys.readouterr().out


def test_interrupted_run_resumes_from_the_frames_done(tmp_path, sam2_file, small_sam2, monkeypatch):
    from napari_sam.engine.batch import stack_store
    from napari_sam.errors import BatchWriteError

    frames, labels = _files(tmp_path, seed_frame=0)
    args = ["track", str(tmp_path / "movie.tif"), "--seeds", str(tmp_path / "seeds.tif"), "--out",
            str(tmp_path / "o.zarr"), "--model", str(sam2_file), "--quiet"]
    real = stack_store.write_slice
    written = []

    def failing(group_path, z, plane, pixels=None):
        if z == 4:
            raise BatchWriteError("disk full")
        written.append(z)
        return real(group_path, z, plane, pixels)

    monkeypatch.setattr(stack_store, "write_slice", failing)
    assert main(args) == 3
    assert written == [0, 1, 2, 3]
    monkeypatch.setattr(stack_store, "write_slice", lambda *a, **k: (written.append(a[1]), real(*a, **k)))
    assert main(args) == 0
    assert written[4:] == [3, 4, 5] or written[4:] == [4, 5]
    out = np.asarray(open_labels(tmp_path / "o.zarr"))
    assert out.shape == frames.shape and all((out[t] > 0).any() for t in range(6))


@pytest.mark.parametrize("case, message", [
    ("sam1", "SAM 1 model"),
    ("one frame", "1 frame"),
    ("seed frame outside", "outside the sequence"),
    ("no seeds", "no objects"),
    ("no time axis", "time axis"),
    ("seeds shape", "fit neither"),
])
def test_bad_input_is_refused_before_any_output(tmp_path, sam2_file, small_sam2, capsys, case, message):
    from napari_sam.model import build_sam

    frames, labels = _files(tmp_path)
    movie, seeds, model = tmp_path / "movie.tif", tmp_path / "seeds.tif", str(sam2_file)
    extra = []
    if case == "sam1":
        model = str(tmp_path / "sam1.pt")
        torch.save(build_sam("tiny").state_dict(), model)
    elif case == "one frame":
        tifffile.imwrite(movie, frames[:1], photometric="minisblack", metadata={"axes": "TYX"})
    elif case == "seed frame outside":
        extra = ["--seed-frame", "9"]
    elif case == "no seeds":
        tifffile.imwrite(seeds, np.zeros_like(labels[0]))
    elif case == "no time axis":
        tifffile.imwrite(movie, frames, photometric="minisblack", metadata={"axes": "ZYX"})
        extra = ["--axes", "TYX"]
    elif case == "seeds shape":
        tifffile.imwrite(seeds, labels[0][:30])
    seeds_before = _digest(seeds)
    rc = main(["track", str(movie), "--seeds", str(seeds), "--out", str(tmp_path / "o.zarr"), "--model", model,
               "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "o.zarr").exists()
    assert _digest(seeds) == seeds_before


def test_frames_of_different_shapes_are_refused(tmp_path, sam2_file, small_sam2):
    from PIL import Image

    from napari_sam.engine.volumes.memory_propagation import track
    from napari_sam.errors import InvalidSequenceError
    from napari_sam.model.sam2 import build_sam2

    folder = tmp_path / "jpegs"
    folder.mkdir()
    for t, shape in enumerate([(40, 50), (40, 50), (30, 50)]):
        Image.fromarray(np.zeros(shape, np.uint8)).save(folder / f"{t:05d}.jpg")
    model = build_sam2("sam2.1_hiera_tiny", image_size=SIZE)
    seeds = np.zeros((40, 50), np.int32)
    seeds[10:20, 10:20] = 1
    with pytest.raises(InvalidSequenceError, match="different shapes"):
        list(track(model, folder, seed_labels=seeds))
