"""Engine on an accelerator (cuda, mps) against Meta's reference: fp32, bf16 and fp16.

Same weights for both (perturbed random, nothing downloaded; helpers of bench_engine.py). Per
precision: encoder wall time (CUDA-synchronised, min over repeats) of the reference (under autocast
for bf16/fp16) and of napari-sam, their ratio (> 1: napari-sam faster), the mask agreement of
napari-sam's masks against the reference's fp32 masks over the parity prompts, one click's latency
(median), and the peak device memory of napari-sam's encoder pass.

    python benchmarks/bench_device.py --device cuda --model vit_b --json out.json
    python benchmarks/bench_device.py --device cpu --model tiny --repeats 1   # a dry run anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import PROMPTS, build_pair, mask_agreement, test_image  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def ref_set_image(rp, image, precision: str, device: torch.device) -> None:
    dtype = DTYPES[precision]
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    with torch.inference_mode(), ctx:
        rp.set_image(image)
    rp.features = rp.features.float()


def run(model: str, device_name: str, precisions: list[str], repeats: int, clicks: int) -> dict:
    import segment_anything

    from napari_sam.engine.prediction.predictor import SamPredictor

    device = torch.device(device_name)
    ref, ours = build_pair(model)
    ref, ours = ref.to(device), ours.to(device)
    image = test_image()
    res: dict = {"model": model, "device": device_name, "torch": torch.__version__,
                 "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device_name}
    ref32 = segment_anything.SamPredictor(ref)
    ref_set_image(ref32, image, "fp32", device)  # warm-up and the fp32 reference masks
    for prec in precisions:
        rp, op = segment_anything.SamPredictor(ref), SamPredictor(ours, precision=prec)
        op.set_image(image)  # warm-up (kernels, autotuning) outside the timings
        ref_set_image(rp, image, prec, device)
        t_ref, t_ours = [], []
        peak = None
        for _ in range(repeats):
            t_ref.append(_timed(lambda: ref_set_image(rp, image, prec, device), device))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t_ours.append(_timed(lambda: op.set_image(image), device))
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
        lat = []
        with torch.inference_mode():
            op.predict(**PROMPTS["one_point"])
            for _ in range(clicks):
                lat.append(_timed(lambda: op.predict(**PROMPTS["one_point"]), device))
        entry = {
            "precision_used": op.precision,
            "encoder_ref_s": min(t_ref), "encoder_ours_s": min(t_ours), "ratio_ref_over_ours": min(t_ref) / min(t_ours),
            "click_ms_median": 1000 * statistics.median(lat),
            "peak_memory_mib_ours": peak,
            "agreement_vs_ref_fp32": mask_agreement(ref32, op),
        }
        res[prec] = entry
        print(f"{model} {device_name} {prec}: encoder ref {entry['encoder_ref_s']:.4f} s, ours "
              f"{entry['encoder_ours_s']:.4f} s (x{entry['ratio_ref_over_ours']:.2f}), click "
              f"{entry['click_ms_median']:.1f} ms, IoU vs ref fp32 {entry['agreement_vs_ref_fp32']['iou_mean']:.4f}"
              + (f", peak {peak:.0f} MiB" if peak is not None else ""), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, mps or cpu")
    ap.add_argument("--model", default="vit_b", help="vit_b, vit_l, vit_h or tiny")
    ap.add_argument("--precisions", default="fp32,bf16,fp16", help="comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="encoder passes per implementation and precision")
    ap.add_argument("--clicks", type=int, default=20, help="timed clicks per precision")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    res = run(args.model, args.device, args.precisions.split(","), args.repeats, args.clicks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
