"""Tracking many independent sequences (``track_sequences``): locally, on Dask, resumed, refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam.engine.batch.run import open_labels
from napari_sam.engine.batch.track_many import TrackJob, track_sequences, track_sequences_blocking
from napari_sam.engine.batch.track_run import track_sequence_blocking
from napari_sam.errors import InvalidOutputError, InvalidPromptError, SequencesFailedError
from test_cli_track import sam2_file, small_sam2  # noqa: F401  (fixtures)
from test_memory_propagation import drifting_cells


def _movies(tmp_path, n=2, t_n=5):
    """``n`` movies (the second one mirrored, the third shifted) with 2-D seeds of frame 0; their paths."""
    frames, labels = drifting_cells(t_n)
    variants = [(frames, labels), (frames[:, :, ::-1], labels[:, :, ::-1]),
                (np.roll(frames, 7, axis=1), np.roll(labels, 7, axis=1))]
    (tmp_path / "seeds").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    jobs = []
    for k in range(n):
        f, lab = variants[k]
        movie, seeds = tmp_path / f"pos{k}.tif", tmp_path / "seeds" / f"pos{k}.tif"
        tifffile.imwrite(movie, np.ascontiguousarray(f), photometric="minisblack", metadata={"axes": "TYX"})
        tifffile.imwrite(seeds, np.ascontiguousarray(lab[0]))
        jobs.append(TrackJob(str(movie), str(seeds), str(tmp_path / "out" / f"pos{k}.zarr")))
    return jobs


def _labels(path):
    return np.asarray(open_labels(path)[:])


def test_several_sequences_equal_single_runs(tmp_path, sam2_file, small_sam2):
    jobs = _movies(tmp_path)
    steps = []
    results = track_sequences_blocking(jobs, model=str(sam2_file), callback=steps.append)
    assert [r.n_frames for r in results] == [5, 5] and [r.resumed_frames for r in results] == [0, 0]
    assert steps[-1].done == steps[-1].total == 10 and steps[-1].message.startswith(jobs[1].input)
    for k, job in enumerate(jobs):
        single = track_sequence_blocking(job.input, tmp_path / f"single{k}.zarr", job.seeds, model=str(sam2_file))
        assert np.array_equal(_labels(results[k].path), _labels(single.path))
        assert all((_labels(single.path)[t] > 0).any() for t in range(5))
    assert not np.array_equal(_labels(results[0].path), _labels(results[1].path))  # two different movies
    # a rerun keeps both finished outputs (the same jobs), tracking nothing again
    again = track_sequences_blocking(jobs, model=str(sam2_file))
    assert [r.resumed_frames for r in again] == [5, 5]


def test_dask_run_equals_the_local_run(tmp_path, sam2_file, small_sam2):
    distributed = pytest.importorskip("distributed")
    jobs = _movies(tmp_path)
    local = track_sequences_blocking(jobs, model=str(sam2_file))
    remote_jobs = [TrackJob(j.input, j.seeds, str(tmp_path / "out" / f"remote{k}.tif")) for k, j in enumerate(jobs)]
    steps = []
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        remote = track_sequences_blocking(remote_jobs, model=str(sam2_file), client=client, callback=steps.append)
    for a, b in zip(local, remote):
        assert np.array_equal(tifffile.imread(b.path), _labels(a.path))
    assert sorted(p.message for p in steps[1:]) == sorted(f"{j.input}: done" for j in remote_jobs)
    assert not any((tmp_path / "out").glob("*.partial.zarr"))


def _fail_pos1_at_frame_3(monkeypatch):
    """Make writing frame 3 of sequence ``pos1`` fail (a full disk); returns the real writer."""
    from napari_sam.engine.batch import stack_store
    from napari_sam.errors import BatchWriteError

    real = stack_store.write_slice

    def failing(group_path, z, plane, pixels=None):
        if "pos1" in str(group_path) and z == 3:
            raise BatchWriteError("disk full")
        return real(group_path, z, plane, pixels)

    monkeypatch.setattr(stack_store, "write_slice", failing)
    return real


def test_a_failed_sequence_is_named_and_the_others_kept_then_resumed(tmp_path, sam2_file, small_sam2, monkeypatch):
    from napari_sam.engine.batch import stack_store

    jobs = _movies(tmp_path, n=3)
    real = _fail_pos1_at_frame_3(monkeypatch)
    with pytest.raises(SequencesFailedError) as info:
        track_sequences_blocking(jobs, model=str(sam2_file))
    assert list(info.value.failed) == [jobs[1].input] and "disk full" in str(info.value)
    assert [r.path.name for r in info.value.finished] == ["pos0.zarr", "pos2.zarr"]
    first = {k: _labels(jobs[k].output) for k in (0, 2)}
    import zarr

    partial = zarr.open_group(jobs[1].output, mode="r")
    assert list(partial["done"][:]) == [1, 1, 1, 0, 0]
    kept = np.asarray(partial["slices"][:3])
    monkeypatch.setattr(stack_store, "write_slice", real)
    results = track_sequences_blocking(jobs, model=str(sam2_file))
    assert [r.resumed_frames for r in results] == [5, 3, 5]
    for k in (0, 2):
        assert np.array_equal(_labels(jobs[k].output), first[k])  # not redone
    out = _labels(jobs[1].output)
    assert np.array_equal(out[:3], kept) and all((out[t] > 0).any() for t in range(5))


def test_finished_tiff_outputs_are_kept_when_the_failed_sequences_are_rerun(tmp_path, sam2_file, small_sam2,
                                                                            monkeypatch):
    from napari_sam.engine.batch import stack_store
    from napari_sam.errors import OutputExistsError

    jobs = [TrackJob(j.input, j.seeds, j.output.replace(".zarr", ".tif")) for j in _movies(tmp_path, n=3)]
    real = _fail_pos1_at_frame_3(monkeypatch)
    with pytest.raises(SequencesFailedError):
        track_sequences_blocking(jobs, model=str(sam2_file))
    monkeypatch.setattr(stack_store, "write_slice", real)
    finished = {k: (Path(jobs[k].output).read_bytes(), Path(jobs[k].output).stat().st_mtime_ns) for k in (0, 2)}
    results = track_sequences_blocking(jobs, model=str(sam2_file))
    assert [r.kept for r in results] == [True, False, True] and [r.resumed_frames for r in results] == [5, 3, 5]
    assert finished == {k: (Path(jobs[k].output).read_bytes(), Path(jobs[k].output).stat().st_mtime_ns)
                        for k in (0, 2)}  # not rewritten
    assert tifffile.imread(jobs[1].output).shape == (5, *tifffile.imread(jobs[0].output).shape[1:])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pos0.tif", "pos1.tif", "pos2.tif"]
    # a TIFF without a record (here: rewritten by another program) refuses the whole run, touching nothing
    tifffile.imwrite(jobs[2].output, tifffile.imread(jobs[2].output))
    before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(OutputExistsError, match="carries no job record.*--overwrite"):
        track_sequences_blocking(jobs, model=str(sam2_file))
    assert before == {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize("case, error, message", [
    ("bad third seeds", InvalidPromptError, "pos2.tif: "),
    ("missing third seeds", InvalidPromptError, "do not exist"),
    ("outputs collide", InvalidOutputError, "would both write"),
    ("output on another input", InvalidOutputError, "pos0.tif (read by"),
    ("output on another seed image", InvalidOutputError, "read by"),
])
def test_bad_jobs_are_refused_before_anything_is_written(tmp_path, sam2_file, small_sam2, case, error, message):
    jobs = _movies(tmp_path, n=3)
    if case == "bad third seeds":
        tifffile.imwrite(jobs[2].seeds, np.zeros((30, 20), np.int32))
    elif case == "missing third seeds":
        jobs[2] = TrackJob(jobs[2].input, str(tmp_path / "seeds" / "nope.tif"), jobs[2].output)
    elif case == "outputs collide":
        jobs[2] = TrackJob(jobs[2].input, jobs[2].seeds, jobs[0].output)
    elif case == "output on another input":
        jobs[2] = TrackJob(jobs[2].input, jobs[2].seeds, jobs[0].input)
    elif case == "output on another seed image":
        jobs[2] = TrackJob(jobs[2].input, jobs[2].seeds, jobs[1].seeds)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.tif")}
    gen = track_sequences(jobs, model=str(sam2_file))
    with pytest.raises(error, match=message.replace("(", r"\(")):
        next(gen)
    assert not list((tmp_path / "out").iterdir())  # nothing created for the good jobs either
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*.tif")}


# ---- the command line ----------------------------------------------------------------------------
def _cli(*args):
    from napari_sam.cli import main

    return main(["track", *[str(a) for a in args], "--quiet"])


def test_cli_tracks_several_inputs_with_seed_and_output_folders(tmp_path, sam2_file, small_sam2, capsys):
    jobs = _movies(tmp_path)
    rc = _cli(jobs[0].input, jobs[1].input, "--seeds-dir", tmp_path / "seeds", "--out-dir", tmp_path / "out",
              "--model", sam2_file)
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("2 objects tracked through 5 frames") == 2 and "pos1.zarr" in out
    # the same as the one-input form, which is unchanged
    assert _cli(jobs[1].input, "--seeds", jobs[1].seeds, "--out", tmp_path / "one.zarr", "--model", sam2_file) == 0
    assert np.array_equal(_labels(tmp_path / "one.zarr"), _labels(jobs[1].output))
    # rerun: both finished outputs kept; a manifest names the same jobs
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("input,seeds,out\n" + "".join(
        f"{j.input},seeds/pos{k}.tif,out/pos{k}.zarr\n" for k, j in enumerate(jobs)))
    capsys.readouterr()
    assert _cli("--manifest", manifest, "--model", sam2_file) == 0
    assert capsys.readouterr().out.count("finished by an earlier run, kept") == 2


def test_cli_rerun_keeps_finished_tiff_outputs(tmp_path, sam2_file, small_sam2, capsys):
    jobs = _movies(tmp_path)
    folders = ("--seeds-dir", tmp_path / "seeds", "--out-dir", tmp_path / "out", "--out-format", "tif")
    assert _cli(jobs[0].input, jobs[1].input, *folders, "--model", sam2_file) == 0
    outs = [tmp_path / "out" / f"pos{k}.tif" for k in range(2)]
    first = [(p.read_bytes(), p.stat().st_mtime_ns) for p in outs]
    capsys.readouterr()
    assert _cli(jobs[0].input, jobs[1].input, *folders, "--model", sam2_file) == 0  # rerun: kept, not redone
    assert capsys.readouterr().out.count("finished by an earlier run, kept") == 2
    manifest = tmp_path / "jobs.csv"  # the same jobs named by a manifest
    manifest.write_text("input,seeds,out\n" + "".join(
        f"{j.input},seeds/pos{k}.tif,out/pos{k}.tif\n" for k, j in enumerate(jobs)))
    assert _cli("--manifest", manifest, "--model", sam2_file) == 0
    assert capsys.readouterr().out.count("finished by an earlier run, kept") == 2
    assert first == [(p.read_bytes(), p.stat().st_mtime_ns) for p in outs]
    assert [tifffile.imread(p).shape for p in outs] == [(5, *tifffile.imread(outs[0]).shape[1:])] * 2


def test_cli_several_inputs_on_dask(tmp_path, sam2_file, small_sam2, capsys, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from napari_sam.engine.batch import distributed as napari_distributed

    jobs = _movies(tmp_path)
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        rc = _cli(jobs[0].input, jobs[1].input, "--seeds", jobs[0].seeds, "--seeds", jobs[1].seeds,
                  "--out", tmp_path / "a.tif", "--out", tmp_path / "b.tif", "--model", sam2_file,
                  "--scheduler", cluster.scheduler_address)
    assert rc == 0, capsys.readouterr().err
    local = track_sequences_blocking(jobs, model=str(sam2_file))
    assert np.array_equal(tifffile.imread(tmp_path / "a.tif"), _labels(local[0].path))
    assert np.array_equal(tifffile.imread(tmp_path / "b.tif"), _labels(local[1].path))


@pytest.mark.parametrize("case, message", [
    ("counts", "2 inputs but 1 --seeds"),
    ("out counts", "2 inputs but 3 --out"),
    ("missing seeds", "No seeds for"),
    ("both seeds forms", "not both"),
    ("colliding outputs", "would both write"),
    ("output is an input", "destroy"),
    ("no input", "No input"),
])
def test_cli_refuses_what_does_not_add_up(tmp_path, sam2_file, small_sam2, capsys, case, message):
    jobs = _movies(tmp_path)
    a, b = jobs[0].input, jobs[1].input
    args = {
        "counts": [a, b, "--seeds", jobs[0].seeds, "--out-dir", tmp_path / "out"],
        "out counts": [a, b, "--seeds-dir", tmp_path / "seeds", "--out", "x.zarr", "--out", "y.zarr",
                       "--out", "z.zarr"],
        "missing seeds": [a, b, tmp_path / "pos9.tif", "--seeds-dir", tmp_path / "seeds", "--out-dir",
                          tmp_path / "out"],
        "both seeds forms": [a, "--seeds", jobs[0].seeds, "--seeds-dir", tmp_path / "seeds", "--out-dir",
                             tmp_path / "out"],
        "colliding outputs": [a, b, "--seeds-dir", tmp_path / "seeds", "--out", tmp_path / "o.zarr", "--out",
                              tmp_path / "o.zarr"],
        "output is an input": [a, b, "--seeds-dir", tmp_path / "seeds", "--out", tmp_path / "o.zarr", "--out", a],
        "no input": ["--seeds-dir", tmp_path / "seeds", "--out-dir", tmp_path / "out"],
    }[case]
    if case == "missing seeds":
        tifffile.imwrite(tmp_path / "pos9.tif", np.zeros((5, 8, 8), np.uint8))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.tif")}
    rc = _cli(*args, "--model", sam2_file)
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "o.zarr").exists()
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*.tif")}
