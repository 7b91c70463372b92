"""Joint training for prompts and instances: the decoder's loss, a finite step, exact resume, the stage-2 script."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from test_training import FAST, SMALL, blob_pairs

from napari_sam.model.build import build_from_config
from napari_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig
from napari_sam.training.instance_loss import instance_map_loss, targets_for
from napari_sam.training.trainer import TrainConfig, fine_tune, fine_tune_blocking, state_path

JOINT = replace(FAST, max_steps=4, instance_weight=1.0, instance_lr=4e-3)


def joint_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_from_config(SMALL)
    model.instance_decoder = InstanceDecoder(InstanceDecoderConfig(embed_dim=32, initial_features=4, depth=3))
    return model


def test_loss_is_zero_for_the_targets_and_large_for_their_opposite():
    lab = blob_pairs(1)[0][1]
    t = targets_for([lab], 64)
    assert t.shape == (1, 3, 64, 64)
    assert float(instance_map_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(instance_map_loss(1 - t, t)) > 1.5  # foreground alone: 1
    # distances outside objects do not count: changing them leaves the loss unchanged
    p = t.clone()
    p[:, 1:][t[:, :1].expand(-1, 2, -1, -1) == 0] = 0.3
    assert float(instance_map_loss(p, t)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        instance_map_loss(t[:, :2], t[:, :2])


def test_joint_step_trains_the_decoder_and_the_encoder(tmp_path):
    model = joint_model()
    dec0 = {k: v.clone() for k, v in model.instance_decoder.state_dict().items()}
    enc0 = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    res = fine_tune_blocking(model, blob_pairs(3), tmp_path / "m.pt", replace(JOINT, max_steps=2))
    assert res.completed and len(res.losses) == 2 and all(np.isfinite(res.losses))
    assert any(not torch.equal(v, dec0[k]) for k, v in model.instance_decoder.state_dict().items())
    assert any(not torch.equal(v, enc0[k]) for k, v in model.image_encoder.state_dict().items())
    # one file holds both: SAM's keys and the decoder's under instance_decoder.
    saved = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("instance_decoder.") for k in saved) and "mask_decoder.iou_token.weight" in saved


def test_the_decoder_loss_is_part_of_the_step():
    from napari_sam.training.trainer import _load_sample, training_step_loss

    model = joint_model()
    samples = [_load_sample(blob_pairs(1), 0, SMALL.img_size, False, np.random.default_rng(0))]
    with torch.no_grad():
        with_decoder = float(training_step_loss(model, samples, JOINT, 5, torch.device("cpu")))
        without = float(training_step_loss(model, samples, replace(JOINT, instance_weight=0.0), 5,
                                           torch.device("cpu")))
    assert np.isfinite(with_decoder) and with_decoder > without + 0.1


def test_joint_resume_continues_identically(tmp_path):
    pairs = blob_pairs(3)
    full = joint_model()
    fine_tune_blocking(full, pairs, tmp_path / "full.pt", JOINT)
    out = tmp_path / "part.pt"
    gen = fine_tune(joint_model(), pairs, out, JOINT)
    for p in gen:
        if p.done == 2:
            gen.close()
            break
    assert torch.load(state_path(out), weights_only=True)["step"] == 2
    resumed = joint_model(seed=7)
    res = fine_tune_blocking(resumed, pairs, out, JOINT, resume=True)
    assert res.completed and len(res.losses) == 4
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, full.state_dict()[k], atol=1e-5, rtol=1e-4, msg=k)


def test_stage_two_script_writes_one_file_with_the_decoder(tmp_path):
    spec = importlib.util.spec_from_file_location("train_tiny_s2", Path(__file__).parents[1] / "scripts/train_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from napari_sam.engine.models.zoo import load_model
    from napari_sam.model import build_sam

    init = tmp_path / "init.pt"
    torch.manual_seed(0)
    torch.save(build_sam("tiny").state_dict(), init)
    threads = torch.get_num_threads()
    try:
        rc = mod.main(["--decoder", "--init", str(init), "--steps", "1", "--objects", "2", "--rounds", "1",
                       "--threads", "1", "--fp32", "--out", str(tmp_path / "t.pt"), "--work-dir", str(tmp_path / "w")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    model = load_model(tmp_path / "t.pt", model_type="tiny")
    assert model.instance_decoder is not None and model.instance_decoder.config.depth == 3
    with torch.no_grad():
        maps = model.instance_decoder(torch.zeros(1, 128, 32, 32))
    assert maps.shape == (1, 3, 256, 256)
