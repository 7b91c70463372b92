"""Running a batch stack job on a ``dask.distributed`` cluster.

Each slice is one task (:func:`segment_and_write`). The task reads its slice
(from the input file, opened on the worker, or from data sent with the task
for in-memory input), builds the slice segmenter once per worker process
(:func:`napari_sam.engine.automatic.slice_segmenter.build_cached`: the model is loaded on
the first task and reused), segments, and writes the whole slice plus its
``done`` record into the zarr output itself. Writes are idempotent whole-slice
writes, so a task re-run after a lost worker simply writes the same slice
again; a slice is never half-written (zarr writes each chunk via temp file +
rename, and the record follows the data). Linking then runs on the client
(:meth:`napari_sam.engine.batch.run.StackStore.link`).

The output must be on storage every worker can reach (a shared filesystem on
a cluster). Use it with ``segment_stack(..., client=Client(address))`` or
``napari-sam segment ... --scheduler ADDRESS``; see docs/batch-cli.md for
dask-jobqueue / Slurm.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ...errors import BatchWriteError, InvalidImageError
from ..progress import Progress
from ..automatic.slice_segmenter import SegmentSliceFn, SliceSegmenterSpec, resolve

#: input path/key -> opened stack, per worker process.
_SOURCES: dict[Any, Any] = {}


def _read(source, z: int) -> np.ndarray:
    from .run import as_stack

    arr = _SOURCES.get(source)
    if arr is None:
        arr = _SOURCES[source] = as_stack(source.open())[0]
    return np.asarray(arr[z])


def segment_and_write(seg: SegmentSliceFn | SliceSegmenterSpec, source, z: int, group_path: str,
                      data: np.ndarray | None = None) -> int:
    """Worker task: segment slice ``z`` and write it (and its record) to the output group. Returns ``z``."""
    from .run import write_slice

    image = data if data is not None else _read(source, z)
    from ..store.fingerprint import pixel_hash

    pixels = pixel_hash(image)
    labels = np.asarray(resolve(seg)(image))
    if labels.shape != image.shape[:2]:
        raise InvalidImageError(f"The slice segmenter returned shape {labels.shape} for slice {z}; "
                                f"expected {image.shape[:2]}.")
    write_slice(group_path, z, labels, pixels)
    return z


def connect(scheduler: str) -> Any:
    """A ``Client`` for a scheduler address (``tcp://host:8786``), with a clear error if unreachable."""
    try:
        from distributed import Client
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("Running on a Dask cluster needs the 'distributed' package: "
                          "pip install 'napari-sam-lab[distributed]'.") from e
    try:
        return Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"Cannot reach the Dask scheduler at {scheduler!r}: {e}") from e


def run_slices(
    client: Any,
    seg: SegmentSliceFn | SliceSegmenterSpec,
    source,
    data: Any,
    rgb: bool,
    group_path: str,
    todo: list[int],
    n_z: int,
    done_before: int,
    done_slices: Callable[[], list[int]],
) -> Generator[Progress, None, None]:
    """Submit one task per slice in ``todo`` and yield progress as they finish.

    ``data`` is the in-memory (Z, ...) stack (None when workers read ``source``).
    Closing the generator cancels the tasks not yet finished (finished slices stay).
    """
    from distributed import as_completed

    futures = []
    for z in todo:
        kw = {} if data is None else {"data": np.asarray(data[z])}
        futures.append(client.submit(segment_and_write, seg, source, z, group_path, pure=False,
                                     key=f"napari-sam-slice-{z}-{np.random.randint(1 << 30)}", **kw))
    finished = 0
    try:
        for fut in as_completed(futures):
            try:
                z = fut.result()
            except BatchWriteError as e:
                from .run import _ranges

                done = done_slices()
                raise BatchWriteError(f"{e}. Slices finished and intact: {_ranges(done)}; "
                                      f"run again (without overwrite) to resume.", done) from e
            finished += 1
            yield Progress(done_before + finished, n_z, f"segmented slice {z}")
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
