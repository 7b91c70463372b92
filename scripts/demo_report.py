"""Report what the demo measured, against the true labels the sample came with.

    python scripts/demo_report.py automatic TRUTH.tif FOUND.tif [--min-area N]
    python scripts/demo_report.py click TRUTH.tif MASK.tif ROW COL

``automatic``: how many objects were found (and the size under which objects are
left out), how many are true, and the mean IoU of each true object with its best match.
``click``: the IoU of the one-click mask with the true object under the click, and how
many true objects the mask covers (a mask that swallows its neighbours says so).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool arrays of one shape (0.0 when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 0.0


def best_match_ious(truth: np.ndarray, found: np.ndarray) -> list[float]:
    """For each true object 1..max: the IoU with the found object that overlaps it most (0 if none)."""
    out = []
    for i in range(1, int(truth.max()) + 1):
        t = truth == i
        ids, counts = np.unique(found[t], return_counts=True)
        keep = ids != 0
        out.append(iou(t, found == ids[keep][np.argmax(counts[keep])]) if keep.any() else 0.0)
    return out


def automatic_report(truth: np.ndarray, found: np.ndarray, min_area: int | None = None) -> str:
    n_found = len(np.unique(found[found != 0]))
    left_out = f" (objects under {min_area} px left out)" if min_area else ""
    ious = best_match_ious(truth, found)
    return (f"automatic: {n_found} objects found{left_out}, {int(truth.max())} true; "
            f"mean best-match IoU {np.mean(ious):.2f}")


def click_report(truth: np.ndarray, mask: np.ndarray, row: int, col: int) -> str:
    clicked = int(truth[row, col])
    if clicked == 0:
        return f"one click at (row {row}, col {col}) on background: mask of {int(mask.sum())} px"
    score = iou(truth == clicked, mask)
    covered = [i for i in range(1, int(truth.max()) + 1) if (mask[truth == i]).mean() > 0.5]
    others = len([i for i in covered if i != clicked])
    verdict = ("the clicked nucleus" if score >= 0.5 and not others else
               f"covers {len(covered)} true nuclei" if others else "misses most of the clicked nucleus")
    return (f"one click at (row {row}, col {col}): mask of {int(mask.sum())} px, IoU {score:.2f} with the "
            f"clicked nucleus ({int((truth == clicked).sum())} px); {verdict}")


def main(argv: list[str] | None = None) -> int:
    import tifffile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("automatic")
    a.add_argument("truth")
    a.add_argument("found")
    a.add_argument("--min-area", type=int, default=None)
    c = sub.add_parser("click")
    c.add_argument("truth")
    c.add_argument("mask")
    c.add_argument("row", type=int)
    c.add_argument("col", type=int)
    args = p.parse_args(argv)
    truth = tifffile.imread(args.truth)
    if args.what == "automatic":
        print(automatic_report(truth, tifffile.imread(args.found).reshape(truth.shape), args.min_area))
    else:
        print(click_report(truth, tifffile.imread(args.mask).reshape(truth.shape) > 0, args.row, args.col))
    return 0


if __name__ == "__main__":
    sys.exit(main())
