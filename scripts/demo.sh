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
echo "== automatic segmentation of every nucleus (objects under 64 px are left out: --min-area)"
.venv/bin/napari-sam segment "$OUT/cells.tif" --out "$OUT/labels.tif" --min-area 64 --overwrite
.venv/bin/python scripts/demo_report.py automatic "$OUT/cells_labels.tif" "$OUT/labels.tif" --min-area 64
echo "== one nucleus from one click"
# click at the centre of the first true nucleus
read -r ROW COL < <(.venv/bin/python -c "
import sys, tifffile
from scipy import ndimage
r, c = ndimage.center_of_mass(tifffile.imread(sys.argv[1]) == 1)
print(int(round(r)), int(round(c)))" "$OUT/cells_labels.tif")
.venv/bin/napari-sam predict "$OUT/cells.tif" --point "$ROW" "$COL" --out "$OUT/one_cell.tif" --overwrite
.venv/bin/python scripts/demo_report.py click "$OUT/cells_labels.tif" "$OUT/one_cell.tif" "$ROW" "$COL"
echo "== done: $OUT/labels.tif (all nuclei), $OUT/one_cell.tif (the mask from the click; its IoU is above)"
