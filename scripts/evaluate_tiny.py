"""Evaluate the bundled ``tiny`` model (or any tiny checkpoint) on held-out synthetic images.

    python scripts/evaluate_tiny.py                                  # src/napari_sam/weights/tiny.pt
    python scripts/evaluate_tiny.py --checkpoint build/train_tiny_ais/tiny_train.pt --images 20 --out results/

The held-out set is :class:`napari_sam.training.synthetic_nuclei.NucleiPairs` with seed
12345 (training uses seed 0): widefield-like nuclei, touching and overlapping
clusters. Reported, with the targets of issue 15:

- automatic F1 at IoU 0.5 (pooled over the images) of the instance decoder ("AIS",
  target >= 0.90, at tiny's thresholds from the zoo, chosen by ``scripts/tune_tiny_ais.py``
  on another seed) when the checkpoint carries one, of automatic mask generation
  ("AMG", grid prompts, at tiny's own thresholds from the zoo, or ``--amg-iou`` / ``--amg-stability``)
  and of the classical pipeline (Gaussian, Otsu, distance-transform watershed);
- mean IoU of one positive click at each nucleus's centre (target >= 0.85; the
  candidate with the highest predicted IoU, as the plugin shows) and of a tight box
  (target >= 0.90); ``--cells N`` adds the same on N older synthetic cells images.

Writes ``tiny_eval.json`` and ``tiny_eval.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"ais_f1": 0.90, "click_iou": 0.85, "box_iou": 0.90}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "src/napari_sam/weights/tiny.pt"))
    ap.add_argument("--images", type=int, default=20, help="held-out nuclei images")
    ap.add_argument("--cells", type=int, default=0, help="also score prompts on this many cells images")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--size", type=int, nargs=2, default=(256, 256), help="image height width")
    ap.add_argument("--amg-images", type=int, default=None, help="score AMG on the first N images only (slow)")
    ap.add_argument("--amg-iou", type=float, default=None, help="AMG pred_iou_thresh (default: tiny's in the zoo)")
    ap.add_argument("--amg-stability", type=float, default=None, help="AMG stability_score_thresh")
    ap.add_argument("--no-amg", action="store_true")
    ap.add_argument("--out", default=str(REPO / "build/eval_tiny"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from napari_sam.engine.automatic.settings import AutoSettings
    from napari_sam.engine.models.zoo import get_entry, load_model
    from napari_sam.training.evaluate import evaluate_prompts
    from napari_sam.training.evaluate_automatic import classical_labels, evaluate_automatic
    from napari_sam.training.synthetic import SyntheticPairs
    from napari_sam.training.synthetic_nuclei import NucleiPairs

    model = load_model(Path(args.checkpoint), device="cpu", model_type="tiny", progressbar=False)
    held_out = NucleiPairs(args.images, seed=args.seed, shape=tuple(args.size))
    results: dict = {"settings": {"checkpoint": str(args.checkpoint), "images": args.images, "seed": args.seed,
                                  "size": list(args.size), "has_decoder": model.instance_decoder is not None}}
    auto = {}
    auto["classical"] = evaluate_automatic(classical_labels, held_out).summary()
    if model.instance_decoder is not None:
        from napari_sam.engine.automatic.instance_decoder import segment_with_decoder

        ais_settings = AutoSettings(method="ais").resolved(
            has_decoder=True, model_defaults=dict(get_entry("tiny").automatic), model_name="tiny")
        auto["ais"] = evaluate_automatic(
            lambda im: segment_with_decoder(model, im, settings=ais_settings.instance_map_settings()), held_out).summary()
    if not args.no_amg:
        from napari_sam.engine.automatic.amg import SamAutomaticMaskGenerator
        from napari_sam.engine.progress import run_blocking

        amg_settings = AutoSettings(method="amg", pred_iou_thresh=args.amg_iou,
                                    stability_score_thresh=args.amg_stability).resolved(
            has_decoder=False, model_defaults=dict(get_entry("tiny").automatic), model_name="tiny")
        amg = SamAutomaticMaskGenerator.from_settings(model, amg_settings)
        subset = NucleiPairs(min(args.amg_images or args.images, args.images), seed=args.seed, shape=tuple(args.size))
        auto["amg"] = {**evaluate_automatic(lambda im: run_blocking(amg.label_slice_iter(im)), subset).summary(),
                       "pred_iou_thresh": amg_settings.pred_iou_thresh,
                       "stability_score_thresh": amg_settings.stability_score_thresh}
    results["automatic"] = auto
    prompts = {"nuclei": evaluate_prompts(model, held_out).summary()}
    if args.cells:
        prompts["cells"] = evaluate_prompts(model, SyntheticPairs(args.cells, seed=args.seed + 1,
                                                                  shape=tuple(args.size), kind="cells")).summary()
    results["prompts"] = prompts
    nuc = prompts["nuclei"]
    results["targets"] = {
        "ais_f1": [auto["ais"]["f1"] if "ais" in auto else None, TARGETS["ais_f1"]],
        "click_iou": [nuc["click_iou"], TARGETS["click_iou"]],
        "box_iou": [nuc["box_iou"], TARGETS["box_iou"]],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiny_eval.json").write_text(json.dumps(results, indent=2))
    lines = [f"checkpoint {args.checkpoint}, {args.images} held-out nuclei images (seed {args.seed})", "",
             "| automatic method | F1 at IoU 0.5 | precision | recall | true | found | s / image |",
             "|---|---|---|---|---|---|---|"]
    for name, r in auto.items():
        lines.append(f"| {name} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['n_true']} | "
                     f"{r['n_found']} | {r['seconds_per_image']:.2f} |")
    lines += ["", "| prompts on | objects | centre click IoU | best-of-3 click IoU | box IoU |", "|---|---|---|---|---|"]
    for name, r in prompts.items():
        lines.append(f"| {name} | {r['n_objects']} | {r['click_iou']:.3f} | {r['click_best_iou']:.3f} | "
                     f"{r['box_iou']:.3f} |")
    lines += [""] + [f"{k}: {'n/a' if v is None else f'{v:.3f}'} (target >= {t})"
                     for k, (v, t) in results["targets"].items()]
    (out / "tiny_eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
