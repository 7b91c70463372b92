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


def test_a_run_stopped_after_a_step_and_resumed_gives_the_uninterrupted_runs_weights(tmp_path):
    """``--stop-after-step`` saves the weights of that step of the full schedule, and ``--resume``
    continues to exactly the weights of a run that was never stopped (what makes a shipped
    checkpoint of a long background run reproducible)."""
    import torch

    threads = torch.get_num_threads()
    common = ["--steps", "3", "--objects", "2", "--rounds", "1", "--threads", "1"]
    try:
        whole = tmp_path / "whole.pt"
        assert _script().main(common + ["--out", str(whole), "--work-dir", str(tmp_path / "w1")]) == 0
        part, work = tmp_path / "part.pt", tmp_path / "w2"
        assert _script().main(common + ["--out", str(part), "--work-dir", str(work), "--stop-after-step", "2"]) == 0
        info = json.loads((work / "run.json").read_text())
        assert info["completed"] is False
        assert torch.load(work / "tiny_train.pt.state.pt", weights_only=True)["step"] == 2
        stopped = torch.load(part, weights_only=True)
        assert _script().main(common + ["--out", str(part), "--work-dir", str(work), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = torch.load(whole, weights_only=True), torch.load(part, weights_only=True)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], stopped[k]) for k in a)  # the stop really was a step earlier


def test_tune_script_scores_the_grid_and_prints_the_best_values(tmp_path, capsys):
    import importlib.util as iu

    import torch

    from napari_sam.model import build_sam
    from napari_sam.model.instance_decoder import InstanceDecoder, tiny_decoder_config

    torch.manual_seed(0)
    model = build_sam("tiny")
    model.instance_decoder = InstanceDecoder(tiny_decoder_config(model.prompt_encoder.embed_dim))
    ckpt = tmp_path / "tiny_with_decoder.pt"
    torch.save(model.state_dict(), ckpt)
    spec = iu.spec_from_file_location("tune_tiny_ais", SCRIPT.with_name("tune_tiny_ais.py"))
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--checkpoint", str(ckpt), "--images", "2", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    scores = [float(line.rsplit("|", 1)[1]) for line in out.splitlines() if line.count("|") == 4 and "F1" not in line]
    default = float(out.split("micro-sam's defaults (0.5, 0.5, 0.5, 1.6): ")[1].split()[0])
    assert len(scores) == 8 and scores == sorted(scores, reverse=True) and scores[0] >= default
    assert "_TINY values: ('center_distance_threshold'," in out and "('min_size', 16)" in out
    bare = tmp_path / "bare.pt"
    torch.save(build_sam("tiny").state_dict(), bare)
    with pytest.raises(SystemExit, match="no instance decoder"):
        mod.main(["--checkpoint", str(bare), "--images", "1", "--threads", "1"])
