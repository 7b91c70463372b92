"""Evaluate the bundled ``tiny`` model (or any checkpoint) on held-out synthetic images.

    python scripts/evaluate_tiny.py                      # src/napari_sam/weights/tiny.pt
    python scripts/evaluate_tiny.py --checkpoint x.pt --images 40 --out results/

The held-out set uses a different seed from training (training: seed 0).
Writes ``tiny_eval.json`` and ``tiny_eval.md`` to ``--out``: mean IoU of one
positive click at each object's centre (target >= 0.85) and of a tight box
(target >= 0.9), overall, per kind (nuclei / cells) and per object size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "src/napari_sam/weights/tiny.pt"))
    ap.add_argument("--images", type=int, default=40, help="images per kind")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--size", type=int, nargs=2, default=(256, 256), help="image height width")
    ap.add_argument("--out", default=str(REPO / "build/eval_tiny"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_sam.model import build_sam
    from napari_sam.training.evaluate import evaluate_prompts
    from napari_sam.training.synthetic import SyntheticPairs

    model = build_sam("tiny", checkpoint=args.checkpoint)
    results = {}
    all_rows = []
    for k, kind in enumerate(("nuclei", "cells")):
        data = SyntheticPairs(args.images, seed=args.seed + k, shape=tuple(args.size), kind=kind)
        res = evaluate_prompts(model, data)
        results[kind] = res.summary()
        all_rows += res.per_object
    def mean(rows, key):
        return float(np.mean([r[key] for r in rows])) if rows else float("nan")
    keys = ("click_iou", "click_best_iou", "box_iou")
    results["all"] = {"n_objects": len(all_rows), **{k: mean(all_rows, k) for k in keys}}
    for name, lo, hi in (("small (<200 px)", 0, 200), ("medium (200-1500 px)", 200, 1500), ("large (>1500 px)", 1500, 10**9)):
        rows = [r for r in all_rows if lo <= r["area"] < hi]
        results[name] = {"n_objects": len(rows), **{k: mean(rows, k) for k in keys}}
    results["settings"] = {"checkpoint": str(args.checkpoint), "images_per_kind": args.images, "seed": args.seed,
                           "size": list(args.size)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiny_eval.json").write_text(json.dumps(results, indent=2))
    lines = ["| set | objects | centre click IoU | best-of-3 click IoU | box IoU |", "|---|---|---|---|---|"]
    for name, r in results.items():
        if name == "settings":
            continue
        lines.append(f"| {name} | {r['n_objects']} | {r['click_iou']:.3f} | {r['click_best_iou']:.3f} | {r['box_iou']:.3f} |")
    (out / "tiny_eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
