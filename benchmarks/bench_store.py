"""Benchmark: stack precompute into the zarr embedding cache, cache hits, tiling overhead.

    python benchmarks/bench_store.py --model vit_b --measure 2
    python benchmarks/bench_store.py --model tiny --measure 64

1. Writes a 512 x 1024 x 1024 uint16 zarr stack (synthetic blobs + noise,
   chunks (1, 512, 512)) to a temporary folder.
2. Precomputes ``--measure`` slices of it with ``Segmenter(cache_dir=...)``
   (random weights of the chosen architecture: speed does not depend on the
   weights) and reports seconds per slice, the extrapolation to all slices and
   the process's peak RSS (``ru_maxrss``) and RSS growth over the run.
3. Cache hits: a fresh Segmenter on the same cache loads slice embeddings
   from disk (median of the measured slices).
4. Tiling overhead: embeds a tiled 2D image and compares the wall time with
   the sum of the encoder passes alone (time inside ``SamPredictor.encode``).

Prints one JSON object. Numbers depend heavily on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_stack(path: Path, n: int, size: int):
    import zarr

    arr = zarr.create_array(str(path), shape=(n, size, size), chunks=(1, size // 2, size // 2), dtype="uint16")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    base = np.zeros((size, size), np.float32)
    for _ in range(40):
        r, c = rng.integers(0, size, 2)
        base += 2000 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 30.0**2))
    noise = rng.normal(0, 40, (size, size)).astype(np.float32)
    for z in range(n):
        arr[z] = np.clip(np.roll(base, 3 * z, axis=1) + np.roll(noise, z, axis=0) + 200, 0, 65535).astype(np.uint16)
    return arr


class EncodeTimer:
    def __init__(self, seg) -> None:
        self.seconds = 0.0
        self.calls = 0
        original = seg.predictor.encode

        def encode(x):
            t = time.perf_counter()
            out = original(x)
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out

        seg.predictor.encode = encode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_b", help="architecture (random weights): vit_b, vit_t, tiny, ...")
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--measure", type=int, default=2, help="how many slices to precompute")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--tiled-size", type=int, nargs=2, default=None, help="2D image for the tiling overhead")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-tiling", action="store_true", help="embed whole slices (tile_shape='full')")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_sam import Segmenter
    from napari_sam.engine.progress import run_blocking
    from napari_sam.model import build_sam

    result: dict = {"model": args.model, "threads": torch.get_num_threads()}
    torch.manual_seed(0)
    model = build_sam(args.model)
    img_size = model.image_encoder.img_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        stack = make_stack(tmp / "stack.zarr", args.slices, args.size)
        result["stack"] = {"shape": list(stack.shape), "dtype": "uint16", "write_s": round(time.perf_counter() - t, 1)}
        rss0 = rss_mb()

        tiling = {"tile_shape": "full"} if args.no_tiling else {}
        seg = Segmenter(model=model, precision=args.precision, cache_dir=tmp / "cache", **tiling)
        timer = EncodeTimer(seg)
        t = time.perf_counter()
        seg.set_image(stack, axes="zyx")  # a stack by construction, whatever --slices
        info = seg.cache_info()  # fingerprint + intensity limits + opening the group
        setup_s = time.perf_counter() - t
        gen = seg.precompute(range(args.measure))
        next(gen)
        t = time.perf_counter()
        for _ in gen:
            pass
        per_slice = (time.perf_counter() - t) / args.measure
        result["precompute"] = {
            "setup_s (fingerprint, limits, open cache)": round(setup_s, 2),
            "slices_measured": args.measure,
            "s_per_slice": round(per_slice, 3),
            "encoder_s_per_slice": round(timer.seconds / args.measure, 3),
            "encoder_passes": timer.calls,
            "extrapolated_all_slices_min": round(per_slice * args.slices / 60, 1),
            "rss_before_mb": round(rss0),
            "rss_after_mb": round(rss_mb()),
            "peak_rss_mb": round(peak_rss_mb()),
            "tile_grid": list(seg.tile_grid.grid_shape),
            "raw_float32_bytes_per_slice": len(seg.tile_grid) * 4 * int(
                model.prompt_encoder.embed_dim * np.prod(model.prompt_encoder.image_embedding_size)
            ),
            "disk_bytes_per_slice": sum(
                p.stat().st_size for p in Path(info["group"]).rglob("*") if p.is_file() and "features/c" in str(p)
            ) // max(1, args.measure),
        }

        fresh = Segmenter(model=model, precision=args.precision, cache_dir=tmp / "cache", **tiling)
        fresh.set_image(stack, axes="zyx")
        fresh.cache_info()
        hits = []
        for z in range(args.measure):
            t = time.perf_counter()
            fresh.ensure_embedding(z)
            hits.append(time.perf_counter() - t)
        result["cache_hit_ms_median"] = round(1000 * statistics.median(hits), 1)

    tiled = args.tiled_size or [img_size + img_size // 4, img_size]
    image = (np.random.default_rng(1).random(tiled) * 4000).astype(np.uint16)
    seg = Segmenter(model=model, precision=args.precision)
    timer = EncodeTimer(seg)
    seg.set_image(image)
    seg.intensity_limits()
    t = time.perf_counter()
    run_blocking(seg.embed())
    wall = time.perf_counter() - t
    result["tiling"] = {
        "image": tiled,
        "tiles": len(seg.tile_grid),
        "tile_shape": list(seg.tile_grid.tile_shape),
        "halo": list(seg.tile_grid.halo),
        "wall_s": round(wall, 2),
        "encoder_s": round(timer.seconds, 2),
        "overhead_pct": round(100 * (wall - timer.seconds) / timer.seconds, 2),
    }
    result["peak_rss_mb_end"] = round(peak_rss_mb())
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
