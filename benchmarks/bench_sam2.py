"""SAM 2.1 video tracking on CPU: napari-sam against Meta's ``sam2``, same random hiera_tiny weights, one run.

Measured, on a sequence of 512 x 512 frames with two objects drifting over noise (written as
the JPEG folder Meta's predictor reads; napari-sam reads the same folder):

- **image encoder** time per frame (``forward_image`` of one normalised frame), the two
  implementations alternating, minimum over ``--encoder-repeats``;
- **propagation** time per frame and object: both trackers are prompted alike on frame 0
  (object 1 a box and a click, object 2 a mask) and propagated forward in lockstep, frame for
  frame interleaved, so both see the same machine load; the masks are compared on every frame;
- **memory**: the bytes of tensors each tracking state holds at the end (Meta's includes the
  whole video, which it loads up front), and, unless ``--no-rss``, the peak RSS (``VmHWM``) of a
  fresh child process per implementation running the same propagation alone.

napari-sam runs with ``bounded_memory=True`` (what the product uses). The CPU's instruction
set is printed first. Meta's ``sam2`` 1.1.0 and hydra-core must be installed.

    .venv/bin/python benchmarks/bench_sam2.py                      # 200 frames (long on a CPU)
    .venv/bin/python benchmarks/bench_sam2.py --frames 12 --threads 2 --json sam2.json
    .venv/bin/python benchmarks/bench_sam2.py --frames 200 --timed-frames 20 --image-size 256  # RSS over 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

NAME = "sam2.1_hiera_tiny"
VIDEO_OVERRIDES = [  # Meta's build_sam2_video_predictor settings, hole filling off (CUDA only)
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=0",
]


def write_frames(folder: Path, n: int, size: int) -> np.ndarray:
    """``n`` JPEG frames ``size`` x ``size`` (00000.jpg ...); returns object 2's mask on frame 0."""
    from PIL import Image
    from skimage.draw import ellipse

    rng = np.random.default_rng(0)
    first_mask = None
    for t in range(n):
        img = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
        for k, (r, c, a, b, colour) in enumerate((((0.3 + 0.001 * t) * size, (0.3 + 0.002 * t) * size, 0.1 * size,
                                                   0.14 * size, (230, 90, 60)),
                                                  (0.65 * size, (0.7 - 0.002 * t) * size, 0.12 * size, 0.09 * size,
                                                   (70, 200, 240)))):
            rr, cc = ellipse(r, c, a, b, (size, size))
            img[rr, cc] = colour
            if t == 0 and k == 1:
                first_mask = np.zeros((size, size), bool)
                first_mask[rr, cc] = True
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=95)
    return first_mask


def build_ours(state, image_size):
    from napari_sam import SAM2VideoPredictor
    from napari_sam.model.sam2 import build_sam2

    return SAM2VideoPredictor(build_sam2(NAME, state, image_size=image_size), bounded_memory=True)


def build_meta(state, image_size):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    cfg = compose(config_name="configs/sam2.1/sam2.1_hiera_t.yaml",
                  overrides=[*VIDEO_OVERRIDES, f"++model.image_size={image_size}"])
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def tensor_bytes(obj, seen=None) -> int:
    """Bytes of the tensors reachable from ``obj`` (dicts, lists, dataclasses), each counted once."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(obj, f), seen) for f in obj.__dataclass_fields__)
    return 0


def prompt(predictor, state, mask2, size):
    predictor.add_new_points_or_box(state, 0, 1, points=np.array([[0.3 * size, 0.3 * size]], np.float32),
                                    labels=np.array([1], np.int32),
                                    box=np.array([0.14 * size, 0.18 * size, 0.46 * size, 0.42 * size], np.float32))
    predictor.add_new_mask(state, 0, 2, mask2)


def encoder_times(ours, meta, size, repeats):
    import torch

    x = torch.randn(1, 3, size, size)
    times = {"ours": [], "meta": []}
    with torch.inference_mode():
        for _ in range(repeats):
            for who, fn in (("meta", meta.forward_image), ("ours", ours.model.forward_image)):
                t0 = time.perf_counter()
                fn(x)
                times[who].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def lockstep(ours, meta, folder, mask2, size, n_frames):
    """Propagate both frame for frame; per-frame seconds, mask agreement and state bytes."""
    import torch

    t0 = time.perf_counter()
    st_meta = meta.init_state(video_path=str(folder))
    meta_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    st_ours = ours.init_state(folder)
    ours_init = time.perf_counter() - t0
    with torch.inference_mode():
        prompt(meta, st_meta, mask2, size)
        prompt(ours, st_ours, mask2, size)
    gens = {"meta": meta.propagate_in_video(st_meta), "ours": ours.propagate_in_video(st_ours)}
    per = {"meta": [], "ours": []}
    agree = []
    for _ in range(n_frames):
        out = {}
        for who in ("meta", "ours"):
            t0 = time.perf_counter()
            out[who] = next(gens[who])
            per[who].append(time.perf_counter() - t0)
        a, b = (out[w][2] > 0 for w in ("meta", "ours"))
        agree.append(float((a == b).float().mean()))
        print(json.dumps({"frame": out["ours"][0], "s": {w: round(per[w][-1], 3) for w in per},
                          "mask_agreement": agree[-1]}), flush=True)
    return {
        "init_s": {"meta": meta_init, "ours": ours_init},
        "per_frame_s": per,
        "mask_agreement_min": min(agree),
        "state_bytes": {"meta": tensor_bytes(st_meta), "ours": ours.memory_bytes(st_ours)},
    }


def child(who: str, folder: str, frames: int, size: int, image_size: int, threads: int) -> None:
    """Run one implementation's propagation alone and print its peak RSS (VmHWM, MiB)."""
    import torch
    from sam2_state import perturbed_sam2_state

    torch.set_num_threads(threads)
    state = perturbed_sam2_state(NAME)
    mask2 = np.load(Path(folder) / "mask2.npy")
    predictor = build_ours(state, image_size) if who == "ours" else build_meta(state, image_size)
    with torch.inference_mode():
        st = predictor.init_state(Path(folder) if who == "ours" else folder)
        prompt(predictor, st, mask2, size)
        for _ in zip(range(frames), predictor.propagate_in_video(st)):
            pass
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss_mib": hwm / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200, help="sequence length (the peak-RSS runs propagate all of it)")
    ap.add_argument("--timed-frames", type=int, default=None,
                    help="frames of the interleaved timing run (default: all); the per-frame cost is flat once "
                         "the memory bank is full (frame 7)")
    ap.add_argument("--size", type=int, default=512, help="frame side in pixels")
    ap.add_argument("--image-size", type=int, default=1024, help="model input side (SAM 2.1: 1024)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder-repeats", type=int, default=3)
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=["ours", "meta"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.folder, args.frames, args.size, args.image_size, args.threads)

    import torch
    from bench_click import cpu_instruction_set
    from sam2_state import perturbed_sam2_state

    torch.set_num_threads(args.threads)
    result = {"cpu": cpu_instruction_set(), "frames": args.frames, "size": args.size,
              "image_size": args.image_size, "threads": args.threads, "objects": 2}
    print(json.dumps({"cpu": result["cpu"]}), flush=True)
    state = perturbed_sam2_state(NAME)
    ours, meta = build_ours(state, args.image_size), build_meta(state, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mask2 = write_frames(folder, args.frames, args.size)
        enc = encoder_times(ours, meta, args.image_size, args.encoder_repeats)
        result["encoder_s_per_frame"] = enc
        result["encoder_meta_over_ours"] = enc["meta"] / enc["ours"]
        print(json.dumps({"encoder_s_per_frame": enc}), flush=True)
        timed = min(args.frames, args.timed_frames or args.frames)
        result["timed_frames"] = timed
        lock = lockstep(ours, meta, folder, mask2, args.size, timed)
        per = lock.pop("per_frame_s")
        tracked = {w: per[w][1:] for w in per}  # frame 0 is the prompted frame (no tracking step)
        result.update(lock)
        result["propagation_s_per_frame_per_object"] = {w: statistics.median(v) / 2 for w, v in tracked.items()}
        result["propagation_meta_over_ours"] = statistics.median(
            [m / o for m, o in zip(tracked["meta"], tracked["ours"])])
        result["propagation_s_first_last"] = {w: [round(v[0], 3), round(v[-1], 3)] for w, v in tracked.items()}
        if not args.no_rss:
            np.save(folder / "mask2.npy", mask2)
            rss = {}
            for who in ("meta", "ours"):
                out = subprocess.run([sys.executable, __file__, "--child", who, "--folder", str(folder),
                                      "--frames", str(args.frames), "--size", str(args.size),
                                      "--image-size", str(args.image_size), "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
                rss[who] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]
            result["peak_rss_mib"] = rss
    result["cpu"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
