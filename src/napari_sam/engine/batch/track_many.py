"""Tracking many independent sequences: one after another, or one Dask task per sequence.

A sequence is tracked frame after frame (the SAM 2.1 memory of one frame feeds the next),
so the unit of parallel work is a whole sequence: many movies, or many positions of one
experiment, each a :class:`TrackJob` (input, seeds, output). Each job runs exactly as
``napari-sam track`` runs one (:func:`~napari_sam.engine.batch.track_run.prepare_track` then
:func:`~napari_sam.engine.batch.track_run.run_track`): same output layout, same resume.

- Every job is checked before anything is written (inputs, axes, seeds, outputs, and across
  jobs: two outputs in one place, an output that is or overlaps any job's input or seeds), and
  the model once; a bad third job refuses the whole run with nothing created.
- A sequence that fails does not stop the others: the run goes on, and at the end
  :class:`~napari_sam.errors.SequencesFailedError` names each failed input with its error
  (``finished`` holds the results of the others, whose outputs are complete).
- A rerun of the same jobs resumes: an unfinished output goes on from its last frame, and a
  finished output of the same job (``.zarr``, or a TIFF with the job record in its description:
  :mod:`~napari_sam.engine.batch.job_record`) is kept and reported, not redone. A TIFF without a
  record (another program's, or an older napari-sam's), another job's output, or a file that
  cannot be read is refused before anything is written.

On a cluster (``client``: a ``dask.distributed.Client``) each sequence is one task; the
worker opens the input and writes the output itself, so both must be on storage every
worker can reach. Each worker process loads the model once for all its sequences.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InvalidOutputError, InvalidParameterError, NapariSamError, SequencesFailedError
from ..progress import Progress, relay, run_blocking
from .track_run import PreparedTrack, TrackResult, load_sam2, prepare_track, run_track


@dataclass(frozen=True)
class TrackJob:
    """One sequence to track: ``input`` (path or (T, Y, X) array), ``seeds`` (label image, path or
    array; see :func:`~napari_sam.engine.batch.track_run.track_sequence`), ``output`` (.zarr or
    .tif/.tiff), ``seed_frame`` (the frame a 2-D seed image belongs to)."""

    input: Any
    seeds: Any
    output: str | os.PathLike
    seed_frame: int = 0


def job_name(job: TrackJob, index: int) -> str:
    """How messages name a job: its input path, or ``sequence N`` (1-based) for an array."""
    return str(job.input) if isinstance(job.input, (str, os.PathLike)) else f"sequence {index + 1}"


def _named(error: NapariSamError, name: str) -> NapariSamError:
    """``error`` of the same type with ``name:`` in front (raise it ``from error``)."""
    try:
        return type(error)(f"{name}: {error}")
    except Exception:  # an error type with another signature: keep it as it is
        return error


def _write_paths(job: TrackJob) -> list[Path]:
    out = Path(job.output).expanduser()
    paths = [out]
    if out.suffix.lower() in (".tif", ".tiff"):
        paths.append(out.with_name(out.name + ".partial.zarr"))
    return paths


def _check_paths(jobs: Sequence[TrackJob], names: list[str]) -> None:
    """Across jobs: no two outputs in one place, no output on any job's input or seeds."""
    from ..store.output_paths import overlap

    read = [(names[i], str(p)) for i, j in enumerate(jobs) for p in (j.input, j.seeds)
            if isinstance(p, (str, os.PathLike))]
    writes = [_write_paths(j) for j in jobs]
    for i, paths in enumerate(writes):
        for other, what in read:
            for p in paths:
                how = overlap(p, what)
                if how is not None:
                    raise InvalidOutputError(
                        f"{names[i]}: the output {p} {how} {what} (read by {other}); writing it would destroy "
                        "that data. Choose an output outside every input and seed image.")
        for k in range(i):
            for p in paths:
                for q in writes[k]:
                    if overlap(p, q) is not None:
                        raise InvalidOutputError(
                            f"{names[k]} and {names[i]} would both write {q if overlap(p, q) == 'contains' else p}; "
                            "give each sequence its own output.")


def check_jobs(jobs: Sequence[TrackJob], model: Any = None, axes: str | None = None, channel: Any = None,
               overwrite: bool = False) -> list[PreparedTrack]:
    """Check every job (and all of them together) without writing anything; the prepared jobs.

    Raises the first problem found, its message starting with the job's name.
    """
    if not jobs:
        raise InvalidParameterError("No sequences to track: give at least one input with its seeds and output.")
    names = [job_name(j, i) for i, j in enumerate(jobs)]
    _check_paths(jobs, names)
    prepared = []
    for job, name in zip(jobs, names):
        try:
            prepared.append(prepare_track(job.input, job.output, job.seeds, model=model, axes=axes, channel=channel,
                                          seed_frame=job.seed_frame, overwrite=overwrite,
                                          keep_finished=not overwrite))
        except NapariSamError as e:
            raise _named(e, name) from e
    return prepared


def track_sequences(
    jobs: Sequence[TrackJob | tuple],
    model: Any = None,
    axes: str | None = None,
    channel: Any = None,
    overwrite: bool = False,
    device: str | None = None,
    client: Any = None,
) -> Generator[Progress, None, list[TrackResult]]:
    """Track every job's seeded objects through its sequence; a progress generator.

    Args:
        jobs: :class:`TrackJob` (or ``(input, seeds, output[, seed_frame])`` tuples).
        model, axes, channel, overwrite, device: as for
            :func:`~napari_sam.engine.batch.track_run.track_sequence`, the same for every job.
        client: a ``dask.distributed.Client``: one task per sequence on its workers (paths
            on shared storage); None tracks the sequences here, one after another.

    Progress: ``total`` = the frames of all sequences; ``message`` starts with the sequence's name.
    Returns: one :class:`~napari_sam.engine.batch.track_run.TrackResult` per job, in job order
    (``kept`` for a finished output kept from an earlier run).
    Raises: before anything is written, the first problem of any job (named); after the run,
    :class:`~napari_sam.errors.SequencesFailedError` if some sequences failed (the others finished).
    """
    jobs = [j if isinstance(j, TrackJob) else TrackJob(*j) for j in jobs]
    prepared = check_jobs(jobs, model=model, axes=axes, channel=channel, overwrite=overwrite)
    names = [job_name(j, i) for i, j in enumerate(jobs)]
    # a wrong or SAM 1 model is refused before anything is written (on a cluster the check loads it
    # on the CPU here: the client need not have the workers' device)
    sam2 = load_sam2(model, device if client is None else "cpu")
    total = sum(p.shape[0] for p in prepared)
    if client is None:
        outcomes = yield from _run_here(prepared, names, sam2, total)
    else:
        del sam2  # checked; each worker loads its own
        outcomes = yield from _run_on_cluster(client, jobs, prepared, names, model, axes, channel, overwrite,
                                              device, total)
    failed = {names[i]: o for i, o in enumerate(outcomes) if isinstance(o, str)}
    finished = [o for o in outcomes if isinstance(o, TrackResult)]
    if failed:
        lines = "\n".join(f"  {name}: {why}" for name, why in failed.items())
        raise SequencesFailedError(
            f"{len(failed)} of {len(jobs)} sequences failed ({len(finished)} finished and kept; run the same "
            f"command again to resume the failed ones):\n{lines}", failed, finished)
    return finished


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if not isinstance(error, NapariSamError) else str(error)


def _run_here(prepared: list[PreparedTrack], names: list[str], sam2: Any,
              total: int) -> Generator[Progress, None, list[TrackResult | str]]:
    outcomes: list[TrackResult | str] = []
    offset = 0
    for prep, name in zip(prepared, names):
        def each(p: Progress, offset: int = offset, name: str = name) -> Progress:
            return Progress(offset + p.done, total, f"{name}: {p.message}")

        try:
            outcomes.append((yield from relay(run_track(prep, sam2), each=each)))
        except Exception as e:  # the others go on; reported together at the end
            outcomes.append(_why(e))
        offset += prep.shape[0]
        yield Progress(offset, total, f"{name}: {'failed' if isinstance(outcomes[-1], str) else 'done'}")
    return outcomes


#: (model key, device) -> loaded SAM 2.1 model, per worker process (one at a time).
_MODELS: dict[tuple, Any] = {}


def _model_key(model: Any) -> tuple | None:
    if model is None:
        return ("default",)
    if isinstance(model, (str, os.PathLike)):
        p = Path(model).expanduser()
        try:
            st = p.stat()
            return (str(p.resolve()), st.st_size, st.st_mtime_ns)  # a replaced file is loaded again
        except OSError:
            return (str(model),)  # a zoo name
    return None  # a built model: used as it is


def worker_model(model: Any, device: str | None) -> Any:
    """The SAM 2.1 model for ``model`` in this process, loaded once (the last one kept)."""
    key = _model_key(model)
    if key is None:
        return load_sam2(model, device)
    key = (*key, device)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_sam2(model, device)
    return _MODELS[key]


def track_task(job: TrackJob, model: Any, axes: str | None, channel: Any, overwrite: bool,
               device: str | None) -> TrackResult:
    """Worker task: track one sequence exactly as a single run does (checks, resume, writes)."""
    prepared = prepare_track(job.input, job.output, job.seeds, model=model, axes=axes, channel=channel,
                             seed_frame=job.seed_frame, overwrite=overwrite, keep_finished=not overwrite)
    return run_blocking(run_track(prepared, worker_model(model, device)))


def _run_on_cluster(client: Any, jobs: list[TrackJob], prepared: list[PreparedTrack], names: list[str], model: Any,
                    axes: str | None, channel: Any, overwrite: bool, device: str | None,
                    total: int) -> Generator[Progress, None, list[TrackResult | str]]:
    """One task per sequence; progress as sequences finish. Closing it cancels the tasks not yet
    finished (the frames they wrote stay, so a rerun resumes them)."""
    import uuid

    from distributed import as_completed

    if model is not None and not isinstance(model, (str, os.PathLike)):
        model = client.scatter(model, broadcast=True)  # a built model: sent once, not with every task
    elif model is not None:
        model = str(model)
    outcomes: list[TrackResult | str | None] = [None] * len(jobs)
    run_id = uuid.uuid4().hex[:8]
    futures = [client.submit(track_task, job, model, axes, channel, overwrite, device, pure=False,
                             key=f"napari-sam-track-{run_id}-{i}") for i, job in enumerate(jobs)]
    index = {f.key: i for i, f in enumerate(futures)}
    done = 0
    yield Progress(0, total, f"{len(jobs)} sequences submitted")
    try:
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                outcomes[i] = fut.result()
            except Exception as e:  # the others go on; reported together at the end
                outcomes[i] = _why(e)
            done += prepared[i].shape[0]
            yield Progress(done, total, f"{names[i]}: {'failed' if isinstance(outcomes[i], str) else 'done'}")
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
    return outcomes


def track_sequences_blocking(jobs: Sequence[TrackJob | tuple], callback=None, show_progress: bool = False,
                             **kwargs) -> list[TrackResult] | None:
    """Blocking :func:`track_sequences` (``callback`` returning False cancels and returns None)."""
    return run_blocking(track_sequences(jobs, **kwargs), callback=callback, show_progress=show_progress,
                        description="napari-sam track")


__all__ = ["TrackJob", "check_jobs", "job_name", "track_sequences", "track_sequences_blocking", "track_task",
           "worker_model"]
