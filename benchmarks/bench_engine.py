"""Engine speed and memory against Meta's reference ``segment-anything``, side by side.

Both models get the same perturbed random weights (nothing is downloaded) and
the same input; reference and napari-sam runs alternate in one process so
that load from other processes hits both alike. Peak RSS is measured per
configuration in a fresh child process (``resource.getrusage``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_engine.py                 # vit_b, everything
    .venv/bin/python benchmarks/bench_engine.py --repeats 3 --threads 2 --json out.json
    .venv/bin/python benchmarks/bench_engine.py --model tiny --only-leak --leak 100   # leak check
    .venv/bin/python benchmarks/bench_engine.py --model vit_b --compile --repeats 2   # torch.compile

Printed: wall and CPU seconds (min over repeats) for encoder fp32, encoder
reduced precision, one click and a batch of boxes, ratios reference/ours
(> 1 means napari-sam is faster), achieved GFLOP/s against this machine's
measured matmul peak, peak RSS per configuration, and the mask agreement of
reduced precision against fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- setup -----------------------------------------------------------------------------------------


def perturbed_state_dict(model: torch.nn.Module, seed: int = 3, scale: float = 0.02) -> dict:
    """Every float tensor plus small noise (many SAM tensors initialise to zero)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v).clone()
        for k, v in model.state_dict().items()
    }


def build_ref(model_type: str) -> torch.nn.Module:
    """Meta's model of ``model_type`` ('tiny': Meta's modules in napari-sam's small test layout)."""
    if model_type == "tiny":
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        from test_parity_reference import _ref_tiny

        return _ref_tiny()
    import segment_anything

    return segment_anything.sam_model_registry[model_type]()


def build_pair(model_type: str):
    """(reference Sam, napari-sam Sam) with identical weights, eval mode."""
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    ref = build_ref(model_type)
    sd = perturbed_state_dict(ref)
    ref.load_state_dict(sd)
    ref.eval()
    ours = build_sam(model_type)
    ours.load_state_dict(sd, strict=True)
    ours.eval()
    return ref, ours


def test_image(h: int = 480, w: int = 640) -> np.ndarray:
    """Non-square uint8 RGB image with a few bright disks (the parity tests' image)."""
    from skimage.draw import disk

    rng = np.random.default_rng(7)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for _ in range(6):
        rr, cc = disk((rng.integers(20, h - 20), rng.integers(20, w - 20)), rng.integers(10, 40), shape=(h, w))
        img[rr, cc] = rng.integers(120, 255, 3)
    return img


PROMPTS = {
    "one_point": dict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1])),
    "pos_neg_points": dict(point_coords=np.array([[300.0, 200.0], [120.5, 400.25]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([100.0, 80.0, 420.0, 390.0])),
    "points_and_box": dict(
        point_coords=np.array([[300.0, 200.0], [150.0, 100.0]]),
        point_labels=np.array([1, 0]),
        box=np.array([100.0, 80.0, 420.0, 390.0]),
    ),
}


def random_boxes(n: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    x0, y0 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
    return np.stack([x0, y0, x0 + rng.uniform(10, w / 2, n), y0 + rng.uniform(10, h / 2, n)], axis=1)


def vit_flops(cfg) -> float:
    """Multiply-add FLOPs (x2) of one ViT image-encoder forward pass (matmuls and convolutions)."""
    e = cfg.encoder
    g = e.img_size // e.patch_size
    n, d = g * g, e.embed_dim
    fl = 2 * n * d * 3 * e.patch_size**2  # patch embedding
    hidden = int(d * e.mlp_ratio)
    for i in range(e.depth):
        fl += 2 * n * d * (3 * d + d + 2 * hidden)  # qkv, proj, mlp
        if i in e.global_attn_indexes:
            fl += 2 * 2 * n * n * d  # q k^T and attn v
        else:
            ws = e.window_size
            gp = -(-g // ws) * ws
            fl += (gp // ws) ** 2 * 2 * 2 * (ws * ws) ** 2 * d
    fl += 2 * n * d * e.out_chans + 2 * n * e.out_chans * e.out_chans * 9  # neck
    return float(fl)


def matmul_peak(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best GFLOP/s of a (4096 x 768) @ (768 x 3072) product, the encoder MLP's shape."""
    a = torch.randn(4096, 768, dtype=dtype)
    w = torch.randn(3072, 768, dtype=dtype)
    F.linear(a, w)
    best = min(_timed(lambda: F.linear(a, w))[0] for _ in range(repeats))
    return 2 * 4096 * 768 * 3072 / best / 1e9


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


# ---- the configurations ----------------------------------------------------------------------------


def make_predictors(ref, ours, precision: str):
    import segment_anything

    from napari_sam.engine.prediction.predictor import SamPredictor

    return segment_anything.SamPredictor(ref), SamPredictor(ours, precision=precision)


def ref_set_image(rp, image, precision: str):
    """The reference under autocast for reduced precision (its own code has no precision switch)."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext()
    with torch.inference_mode(), ctx:
        rp.set_image(image)
    rp.features = rp.features.float()


def _vm_kib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def run_child(args) -> None:
    """Child process: build only one model, embed the image once, print peak RSS (MiB) as JSON.

    ``peak_rss_mib`` is the whole process's high-water mark (VmHWM);
    ``encode_peak_mib`` the high-water mark during the encode alone (VmHWM reset
    through /proc/self/clear_refs), minus the RSS just before it.
    """
    import gc

    torch.set_num_threads(args.threads)
    impl, prec = args.child.split(":")
    sd = torch.load(args.weights, map_location="cpu", weights_only=True)
    if impl == "ref":
        model = build_ref(args.model)
    else:
        from napari_sam.model import build_sam

        model = build_sam(args.model)
    model.load_state_dict(sd)
    model.eval()
    del sd
    gc.collect()
    from napari_sam.engine.prediction.predictor import SamPredictor

    if impl == "ref":  # the reference's package (and torchvision, ~170 MB) only in its own child
        import segment_anything

    image = test_image()
    before = _vm_kib("VmRSS") / 1024
    hwm_load = _vm_kib("VmHWM") / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
    except OSError:
        pass
    if impl == "ref":
        ref_set_image(segment_anything.SamPredictor(model), image, prec)
    else:
        SamPredictor(model, precision=prec).set_image(image)
    # VmHWM, not getrusage: after fork+exec Linux carries the parent's peak into ru_maxrss.
    print(json.dumps({
        "config": args.child,
        "peak_rss_mib": max(hwm_load, _vm_kib("VmHWM") / 1024),
        "rss_before_encode_mib": before,
        "encode_peak_mib": _vm_kib("VmHWM") / 1024 - before,
    }))


def peak_rss(args, config: str, weights: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, "--model", args.model,
           "--threads", str(args.threads), "--weights", weights]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mask_agreement(p_a, p_b) -> dict:
    """Pixel agreement and IoU of p_b's masks against p_a's over the parity prompts (multimask and single)."""
    eq, ious = [], []
    for kw in PROMPTS.values():
        for multimask in (True, False):
            ma, _, _ = p_a.predict(multimask_output=multimask, **kw)
            mb, _, _ = p_b.predict(multimask_output=multimask, **kw)
            for a, b in zip(ma, mb):
                eq.append(float((a == b).mean()))
                union = np.logical_or(a, b).sum()
                ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
    return {"pixel_agreement_mean": statistics.mean(eq), "pixel_agreement_min": min(eq),
            "iou_mean": statistics.mean(ious), "iou_min": min(ious), "masks": len(eq)}


def leak_check(ours, n: int) -> dict:
    """RSS (MiB) after each tenth of ``n`` successive images through set_image + predict."""
    from napari_sam.engine.prediction.predictor import SamPredictor

    p = SamPredictor(ours, precision="fp32")
    rng = np.random.default_rng(0)
    size = ours.image_encoder.img_size
    trace = []
    for i in range(n):
        p.set_image(rng.integers(0, 255, (size * 3 // 4, size, 3), dtype=np.uint8))
        p.predict(point_coords=np.array([[size / 3, size / 4]]), point_labels=np.array([1]))
        if (i + 1) % max(1, n // 10) == 0:
            with open("/proc/self/statm") as f:
                trace.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
    return {"images": n, "rss_mib_trace": [round(t, 1) for t in trace], "growth_mib": round(trace[-1] - trace[0], 1)}


def compile_check(ours, image, repeats: int) -> dict:
    """First-call (compile) time and steady-state time of SamPredictor(compile=True) vs eager."""
    import warnings

    from napari_sam.engine.prediction.predictor import SamPredictor

    eager = SamPredictor(ours, precision="fp32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comp = SamPredictor(ours, precision="fp32", compile=True)
        first = _timed(lambda: comp.set_image(image))[0]
    if not comp.compile:
        return {"compiled": False, "warnings": [str(w.message) for w in caught]}
    te, tc = [], []
    for _ in range(repeats):
        te.append(_timed(lambda: eager.set_image(image))[1])
        tc.append(_timed(lambda: comp.set_image(image))[1])
    diff = float((eager.get_embedding().features - comp.get_embedding().features).abs().max())
    return {"compiled": True, "first_call_s": first, "eager_cpu_s": min(te), "compiled_cpu_s": min(tc),
            "speedup_cpu": min(te) / min(tc), "embedding_max_abs_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating ref/ours repeats of the encoder")
    ap.add_argument("--clicks", type=int, default=10, help="alternating repeats of one click")
    ap.add_argument("--boxes", type=int, default=64)
    ap.add_argument("--precision", default="bf16", help="reduced precision to compare (bf16 on CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--leak", type=int, default=0, help="also embed this many images and report RSS growth")
    ap.add_argument("--compile", action="store_true", help="only measure torch.compile of the encoder (opt-in)")
    ap.add_argument("--only-decoder", action="store_true", help="only clicks and boxes, on a random embedding")
    ap.add_argument("--only-leak", action="store_true", help="only the leak check (--leak N images, default 100)")
    ap.add_argument("--int8", action="store_true",
                    help="only the encoder: reference fp32, ours fp32 and ours int8, interleaved, with int8's "
                         "mask agreement to fp32 on the parity prompts")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return run_child(args)

    torch.set_num_threads(args.threads)
    res: dict = {
        "command": " ".join([os.path.relpath(sys.executable), "benchmarks/bench_engine.py", *sys.argv[1:]]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cpu_flags": cpu_flags(),
                    "loadavg_start": os.getloadavg()},
    }
    res["matmul_peak_gflops"] = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak GFLOP/s: fp32 {res['matmul_peak_gflops']['fp32']:.0f}, "
          f"bf16 {res['matmul_peak_gflops']['bf16']:.0f}", flush=True)

    ref, ours = build_pair(args.model)
    if args.int8:
        res["int8"] = int8_check(ref, ours, test_image(), args.repeats)
        return _report(res, args.json)
    if args.compile or args.only_leak:
        if args.compile:
            res["compile"] = compile_check(ours, test_image(), args.repeats)
        if args.only_leak:
            res["leak"] = leak_check(ours, args.leak or 100)
        return _report(res, args.json)
    from napari_sam.model.config import get_config

    flops = vit_flops(get_config(args.model))
    image = test_image()
    H, W = image.shape[:2]

    keep = {}
    from napari_sam.engine.models.device import resolve_precision

    reduced = resolve_precision(args.precision, torch.device("cpu"))
    res["reduced_precision_used"] = reduced
    if reduced == "fp32":
        print(f"{args.precision} is not native on this CPU (napari-sam falls back to fp32): "
              "only fp32 is measured", flush=True)
    precisions = ("fp32",) if reduced == "fp32" else ("fp32", args.precision)
    if args.only_decoder:  # a random embedding instead of running the encoders
        feats = 0.5 * torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
        for prec in precisions:
            rp, op = make_predictors(ref, ours, prec)
            input_size = tuple(rp.transform.get_preprocess_shape(H, W, ref.image_encoder.img_size))
            rp.features, rp.original_size, rp.input_size, rp.is_image_set = feats, (H, W), input_size, True
            op.set_embedding(feats, (H, W), input_size)
            keep[prec] = (rp, op)
        if args.precision in keep:  # the reduced-precision decoder alone, same fp32 embedding
            res[f"agreement_{args.precision}_decoder_vs_fp32"] = mask_agreement(keep["fp32"][1], keep[args.precision][1])
            print("decoder agreement:", res[f"agreement_{args.precision}_decoder_vs_fp32"], flush=True)
    else:
        # encoder, fp32 and reduced precision; the last predictors of each are kept for the decoder runs
        warm = make_predictors(ref, ours, "fp32")[1]
        warm.set_image(image[:64, :64])  # first-call costs (thread pools, kernels) outside the timings
        del warm
        for prec in precisions:
            rp, op = make_predictors(ref, ours, prec)
            t = {"ref": [], "ours": []}
            for _ in range(args.repeats):
                t["ref"].append(_timed(lambda: ref_set_image(rp, image, prec))[:2])
                t["ours"].append(_timed(lambda: op.set_image(image))[:2])
            entry = {}
            for who in ("ref", "ours"):
                wall = min(w for w, _ in t[who])
                entry[who] = {"wall_s": wall, "cpu_s": min(c for _, c in t[who]), "gflops": flops / wall / 1e9}
            entry["speedup_wall"] = entry["ref"]["wall_s"] / entry["ours"]["wall_s"]
            entry["speedup_cpu"] = entry["ref"]["cpu_s"] / entry["ours"]["cpu_s"]
            entry["precision_used"] = op.precision
            res[f"encoder_{prec}"] = entry
            keep[prec] = (rp, op)
            print(f"encoder {prec}: ref {entry['ref']['wall_s']:.2f} s, ours {entry['ours']['wall_s']:.2f} s "
                  f"(x{entry['speedup_wall']:.2f} wall, x{entry['speedup_cpu']:.2f} cpu)", flush=True)

        rp32, op32 = keep["fp32"]
        emb = op32.get_embedding().features
        res["embedding_max_abs_diff_fp32"] = float((emb - rp32.features).abs().max())
        res["embedding_scale"] = float(rp32.features.abs().max())
        if args.precision in keep:
            res[f"agreement_{args.precision}_vs_fp32"] = mask_agreement(op32, keep[args.precision][1])
            print("agreement:", res[f"agreement_{args.precision}_vs_fp32"], flush=True)

    # one click: prompt encoder + decoder + upscaling to the original size
    kw = PROMPTS["one_point"]
    for prec in keep:
        rp, op = keep[prec]
        tr, to, cr, co = [], [], [], []
        faults = {"ref": 0, "ours": 0}
        # Blocks of consecutive clicks per implementation (as a user clicks), the blocks
        # alternating ref, ours, ref, ours so that load drift hits both alike. Alternating
        # every single call would make each implementation start from the other's caches
        # and heap (the reference's 1024 x 1024 intermediates evict ours).
        block = max(1, args.clicks // 2)
        with torch.inference_mode():
            for _ in range(2):
                for who, pred, times, cpus in (("ref", rp, tr, cr), ("ours", op, to, co)):
                    pred.predict(**kw)  # first click of a block: caches refilled, not timed
                    f0 = _minor_faults()
                    for _ in range(block):
                        w, c, _ = _timed(lambda: pred.predict(**kw))
                        times.append(w)
                        cpus.append(c)
                    faults[who] += _minor_faults() - f0
        res[f"click_{prec}"] = {"ref_ms": 1e3 * min(tr), "ours_ms": 1e3 * min(to),
                                "ref_page_faults_per_click": faults["ref"] / len(tr),
                                "ours_page_faults_per_click": faults["ours"] / len(to),
                                "ref_cpu_ms": 1e3 * min(cr), "ours_cpu_ms": 1e3 * min(co),
                                "ref_median_ms": 1e3 * statistics.median(tr),
                                "ours_median_ms": 1e3 * statistics.median(to), "speedup": min(tr) / min(to)}
        print(f"click ({prec} embedding): ref {1e3 * min(tr):.1f} ms, ours {1e3 * min(to):.1f} ms", flush=True)

    # a batch of boxes through predict_torch (the reference's decoder is fp32 in every row)
    boxes = random_boxes(args.boxes, H, W)
    for prec in keep:
        rp, op = keep[prec]
        rb = rp.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (H, W))
        ob = op.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (H, W))
        tr, to, cr, co = [], [], [], []
        with torch.inference_mode():
            for _ in range(2):
                w, c, r_out = _timed(lambda: rp.predict_torch(None, None, boxes=rb))
                tr.append(w)
                cr.append(c)
                w, c, o_out = _timed(lambda: op.predict_torch(None, None, boxes=ob))
                to.append(w)
                co.append(c)
        name = f"boxes_{args.boxes}" if prec == "fp32" else f"boxes_{args.boxes}_{prec}"
        res[name] = {"ref_s": min(tr), "ours_s": min(to), "speedup": min(tr) / min(to),
                     "ref_cpu_s": min(cr), "ours_cpu_s": min(co),
                     "mask_equal": float((r_out[0] == o_out[0]).float().mean())}
        print(f"{args.boxes} boxes ({prec}): ref {min(tr):.2f} s, ours {min(to):.2f} s", flush=True)
        del r_out, o_out

    if not args.no_memory and not args.only_decoder:
        import tempfile

        mem = {}
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "weights.pt")
            torch.save(ours.state_dict(), weights)
            configs = ["ref:fp32", "ours:fp32"]
            if args.precision in keep:
                configs += [f"ref:{args.precision}", f"ours:{args.precision}"]
            for config in configs:
                mem[config] = peak_rss(args, config, weights)
                print("peak RSS", mem[config], flush=True)
        res["peak_rss"] = mem
    if args.leak:
        res["leak"] = leak_check(ours, args.leak)
        print("leak check:", res["leak"], flush=True)
    _report(res, args.json)


def cpu_flags() -> list[str]:
    """The vector / matrix extensions of /proc/cpuinfo that decide SAM's CPU speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in flags]


def int8_check(ref, ours, image, repeats: int) -> dict:
    """Encoder wall times (reference fp32, ours fp32, ours int8; interleaved, ``repeats`` rounds)
    and the int8 masks' agreement with ours fp32 over the parity prompts."""
    from napari_sam.engine.prediction.predictor import SamPredictor

    rp = make_predictors(ref, ours, "fp32")[0]
    p32, p8 = SamPredictor(ours, precision="fp32"), SamPredictor(ours, precision="int8")
    p8.set_image(image[:64, :64])  # builds the int8 copy of the encoder, warms the kernels
    p32.set_image(image[:64, :64])
    t = {"ref_fp32": [], "ours_fp32": [], "ours_int8": []}
    for _ in range(repeats):
        t["ref_fp32"].append(_timed(lambda: ref_set_image(rp, image, "fp32"))[0])
        t["ours_fp32"].append(_timed(lambda: p32.set_image(image))[0])
        t["ours_int8"].append(_timed(lambda: p8.set_image(image))[0])
        print({k: round(v[-1], 2) for k, v in t.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in t.items()}
    out = {f"{k}_s": {"median": med[k], "min": min(v), "max": max(v)} for k, v in t.items()}
    out["int8_speedup_vs_ref_fp32_median"] = med["ref_fp32"] / med["ours_int8"]
    out["int8_speedup_vs_ref_fp32_per_round"] = [r / q for r, q in zip(t["ref_fp32"], t["ours_int8"])]
    out["fp32_speedup_vs_ref_fp32_median"] = med["ref_fp32"] / med["ours_fp32"]
    out["int8_speedup_vs_ours_fp32_median"] = med["ours_fp32"] / med["ours_int8"]
    out["agreement_int8_vs_fp32"] = mask_agreement(p32, p8)
    e32, e8 = p32.get_image_embedding(), p8.get_image_embedding()
    out["embedding_rel_error"] = float((e8 - e32).norm() / e32.norm())
    print("int8:", out, flush=True)
    return out


def _report(res: dict, path: str | None) -> None:
    """Print the results as JSON and write them atomically to ``path`` if given."""
    res["machine"]["loadavg_end"] = os.getloadavg()
    text = json.dumps(res, indent=1)
    print(text)
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
