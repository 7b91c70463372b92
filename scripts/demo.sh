#!/usr/bin/env bash
# Install napari-sam into .venv and run its main job on a generated sample:
# automatic instance segmentation of a fluorescence-nuclei image from the command line,
# then one object from a single click. Uses the bundled 'tiny' model (no download);
# set NAPARI_SAM_MODEL to a zoo name (e.g. vit_b) or a checkpoint path to use another.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "== installing napari-sam-lab into .venv"
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e .

OUT=${1:-demo}
mkdir -p "$OUT"
echo "== generating a sample image"
.venv/bin/napari-sam sample cells --out "$OUT/cells.tif" --overwrite
echo "== automatic segmentation of every nucleus"
.venv/bin/napari-sam segment "$OUT/cells.tif" --out "$OUT/labels.tif" --overwrite
echo "== one nucleus from one click"
.venv/bin/python - "$OUT" <<'PY'
import sys
import numpy as np, tifffile
from scipy import ndimage
out = sys.argv[1]
truth = tifffile.imread(f"{out}/cells_labels.tif")
found = tifffile.imread(f"{out}/labels.tif").reshape(truth.shape)
# click at the centre of the first true nucleus
r, c = (int(round(v)) for v in ndimage.center_of_mass(truth == 1))
print(f"clicking at (row {r}, col {c})")
with open(f"{out}/click.txt", "w") as f:
    f.write(f"{r} {c}\n")
ious = []
for i in range(1, truth.max() + 1):
    t = truth == i
    ids, counts = np.unique(found[t], return_counts=True)
    best = max((j for j in ids if j), key=lambda j: (found[t] == j).sum(), default=0)
    p = found == best if best else np.zeros_like(t)
    ious.append((t & p).sum() / max(1, (t | p).sum()))
print(f"automatic: {len(np.unique(found)) - 1} objects found, {int(truth.max())} true; "
      f"mean best-match IoU {np.mean(ious):.2f}")
PY
read -r ROW COL < "$OUT/click.txt"
.venv/bin/napari-sam predict "$OUT/cells.tif" --point "$ROW" "$COL" --out "$OUT/one_cell.tif" --overwrite
echo "== done: $OUT/labels.tif (all nuclei), $OUT/one_cell.tif (the clicked one)"
