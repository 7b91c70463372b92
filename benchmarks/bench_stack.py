"""Stack throughput (slices per minute) of ``segment_stack``: in-process, and on 1 and 2 Dask workers.

Model: the bundled 'tiny' SAM if installed, else a 'tiny' checkpoint with
random (perturbed) weights written to a temp folder — speed depends on the
architecture, but with random weights the number of masks that survive the
filters differs from a trained model, so the IoU/stability thresholds are set
to 0 (every candidate is scored and kept through NMS: the worst case).

Input: a synthetic uint16 stack of nuclei (``--slices`` x ``--size`` x ``--size``).
Each configuration runs once on a fresh zarr output, in this order:

- local: in this process, ``--threads`` torch threads;
- dask-1: LocalCluster, 1 worker process x 1 thread (torch 1 thread);
- dask-2: LocalCluster, 2 worker processes x 1 thread (torch 1 thread each).

Dask timings include each worker's first model load (once per worker) but not
cluster start-up. One run each; numbers vary with machine load.

Usage: python benchmarks/bench_stack.py [--slices 8] [--size 256] [--points-per-side 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _stack(n: int, size: int) -> np.ndarray:
    from skimage.draw import ellipse
    from skimage.filters import gaussian

    rng = np.random.default_rng(0)
    lab = np.zeros((n, size, size), bool)
    for _ in range(max(4, size // 24)):
        zc, r, c = rng.integers(0, n), rng.integers(10, size - 10), rng.integers(10, size - 10)
        for z in range(n):
            rad = 14 - 2 * abs(z - zc)
            if rad > 3:
                rr, cc = ellipse(r, c, rad, rad * 0.8, (size, size))
                lab[z, rr, cc] = True
    img = gaussian(lab.astype(float), (0, 1.5, 1.5)) * 3000 + 200
    return rng.poisson(img).astype(np.uint16)


def _model(tmp: Path) -> str:
    from napari_sam.engine.models.zoo import REGISTRY

    if REGISTRY["tiny"].available:
        return "tiny"
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    m = build_sam("tiny")
    g = torch.Generator().manual_seed(1)
    state = {k: (v + 0.02 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
             for k, v in m.state_dict().items()}
    path = tmp / "tiny_random.pt"
    torch.save(state, path)
    return str(path)


def _time(stack, out, model, pps, client=None) -> tuple[float, int]:
    from napari_sam.engine.batch.run import segment_stack_blocking

    t0 = time.perf_counter()
    r = segment_stack_blocking(stack, out, model=model, device="cpu", points_per_side=pps, pred_iou_thresh=0.0,
                               stability_score_thresh=0.0, client=client)
    return time.perf_counter() - t0, r.n_objects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    torch.set_num_threads(args.threads)
    stack = _stack(args.slices, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    model = _model(tmp)
    print(f"stack {stack.shape} {stack.dtype}, model {Path(model).name}, points_per_side {args.points_per_side}, "
          f"cpu cores {os.cpu_count()}")
    rows = []
    dt, n = _time(stack, tmp / "local.zarr", model, args.points_per_side)
    rows.append((f"local ({args.threads} torch threads)", dt, n))
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
            with Client(cl) as client:
                client.run(torch.set_num_threads, 1)
                dt, n = _time(stack, tmp / f"dask{workers}.zarr", model, args.points_per_side, client)
        rows.append((f"dask, {workers} worker(s) x 1 thread", dt, n))
    print(f"{'configuration':36s} {'seconds':>8s} {'slices/min':>10s} {'3D objects':>10s}")
    for name, dt, n in rows:
        print(f"{name:36s} {dt:8.1f} {60 * args.slices / dt:10.1f} {n:10d}")


if __name__ == "__main__":
    main()
