"""scripts/train_tiny.py end to end on a two-step schedule: flags reach the recipe, weights load."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_tiny_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_run_writes_loadable_weights_with_the_requested_recipe(tmp_path):
    import torch

    from napari_sam.model import build_sam

    threads = torch.get_num_threads()
    try:
        out, work = tmp_path / "tiny.pt", tmp_path / "work"
        rc = _script().main(["--steps", "2", "--objects", "2", "--rounds", "1", "--lr", "1e-4", "--threads", "1",
                             "--out", str(out), "--work-dir", str(work)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0 and out.is_file()
    info = json.loads((work / "run.json").read_text())
    cfg = info["config"]
    assert info["completed"] is True and cfg["max_steps"] == 2
    assert (cfg["objects_per_image"], cfg["n_interactions"], cfg["learning_rate"]) == (2, 1, 1e-4)
    model = build_sam("tiny", checkpoint=str(out))
    state = torch.load(out, weights_only=True)
    assert set(state) == set(model.state_dict())
    assert len((work / "log.txt").read_text().splitlines()) >= 2


def test_the_shipped_recipe_is_the_default():
    """The defaults reproduce the bundled weights: what docs/models.md states."""
    mod = _script()
    d = mod.DEFAULTS
    assert (d["learning_rate"], d["objects_per_image"], d["n_interactions"], d["images_per_step"]) == (6e-4, 8, 3, 2)
    text = (SCRIPT.parents[1] / "docs" / "models.md").read_text()
    assert "peak lr 6e-4" in text and "up to 8" in text and "3 prompt rounds" in text
    with pytest.raises(SystemExit):
        mod.main(["--steps", "not-a-number"])
