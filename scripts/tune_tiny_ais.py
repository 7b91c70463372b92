"""Choose the bundled ``tiny`` model's automatic-segmentation (decoder) thresholds on a validation set.

    python scripts/tune_tiny_ais.py                                   # the bundled weights
    python scripts/tune_tiny_ais.py --checkpoint build/train_tiny_ais/tiny_train.pt

The validation set is :class:`napari_sam.training.synthetic_nuclei.NucleiPairs` with seed 2024
(training uses seed 0, the held-out evaluation of ``scripts/evaluate_tiny.py`` seed 12345, so the
reported scores are not tuned on). The decoder's maps are computed once per image; every
combination of centre distance, boundary distance, foreground threshold and distance smoothing
below is scored by F1 at IoU 0.5 (pooled over the images), and the best is printed as the
``_TINY`` values for :mod:`napari_sam.engine.models.auto_defaults`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = {
    "center_distance_threshold": (0.3, 0.4, 0.5, 0.6),
    "boundary_distance_threshold": (0.3, 0.4, 0.5, 0.6),
    "foreground_threshold": (0.4, 0.5, 0.6),
    "distance_smoothing": (1.0, 1.6),
}
MIN_SIZE = 16  # pixels: the smallest nuclei drawn are about 12


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "src/napari_sam/weights/tiny.pt"))
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from napari_sam.engine.automatic.instance_decoder import decoder_maps
    from napari_sam.engine.automatic.instance_maps import InstanceMapSettings, labels_from_maps
    from napari_sam.engine.models.zoo import load_model
    from napari_sam.engine.prediction.predictor import SamPredictor
    from napari_sam.training.evaluate_automatic import AutomaticScore, matched_pairs, object_count
    from napari_sam.training.synthetic_nuclei import NucleiPairs

    model = load_model(Path(args.checkpoint), device="cpu", model_type="tiny", progressbar=False)
    if model.instance_decoder is None:
        raise SystemExit(f"{args.checkpoint} has no instance decoder.")
    predictor = SamPredictor(model)
    data = []
    for image, truth in NucleiPairs(args.images, seed=args.seed):
        predictor.set_image(image)
        data.append((decoder_maps(model, predictor.get_embedding()), truth))
    rows = []
    for values in itertools.product(*GRID.values()):
        settings = InstanceMapSettings(**dict(zip(GRID, values)), min_size=MIN_SIZE)
        tp = n_true = n_found = 0
        for maps, truth in data:
            found = labels_from_maps(maps[0], maps[1], maps[2], settings)
            tp += matched_pairs(truth, found)
            n_true += object_count(truth)
            n_found += object_count(found)
        rows.append((AutomaticScore(len(data), n_true, n_found, tp, float("nan")).f1, values))
    rows.sort(key=lambda r: -r[0])
    print(f"{args.checkpoint}: {args.images} validation images (seed {args.seed}), F1 at IoU 0.5")
    print(" | ".join(GRID) + " | F1")
    for f1, values in rows[:8]:
        print(" | ".join(str(v) for v in values) + f" | {f1:.3f}")
    f1_default = next(f for f, v in rows if v == (0.5, 0.5, 0.5, 1.6))
    print(f"micro-sam's defaults (0.5, 0.5, 0.5, 1.6): {f1_default:.3f}")
    best = dict(zip(GRID, rows[0][1]), min_size=MIN_SIZE)
    print("_TINY values:", ", ".join(f"({k!r}, {v})" for k, v in best.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
