"""The bundled ``tiny`` file may carry its instance decoder: one file, weights only, strict keys."""

from __future__ import annotations

import pytest
import torch

from napari_sam.engine.models import zoo
from napari_sam.errors import CheckpointError
from napari_sam.model import build_sam
from napari_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig


def _tiny_with_decoder(path, damage=False):
    torch.manual_seed(0)
    model = build_sam("tiny")
    model.instance_decoder = InstanceDecoder(InstanceDecoderConfig(embed_dim=128, initial_features=8, depth=3))
    state = model.state_dict()
    if damage:
        state.pop("instance_decoder.decoder_head.block.1.weight")
    torch.save(state, path)
    return model


def test_load_model_attaches_the_decoder_a_bundled_file_holds(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pt"
    trained = _tiny_with_decoder(path)
    monkeypatch.setattr(zoo, "bundled_path", lambda entry: path)
    model = zoo.load_model("tiny", device="cpu")
    assert model.instance_decoder is not None and model.instance_decoder.config.depth == 3
    for k, v in trained.instance_decoder.state_dict().items():
        assert torch.equal(model.instance_decoder.state_dict()[k], v), k
    assert zoo.load_model("tiny", device="cpu", with_decoder=False).instance_decoder is None
    _tiny_with_decoder(path, damage=True)
    with pytest.raises(CheckpointError, match=r"missing keys: decoder_head\.block\.1\.weight(.|\n)*with_decoder=False"):
        zoo.load_model("tiny", device="cpu")


def test_a_bundled_file_without_decoder_loads_without_one(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pt"
    torch.save(build_sam("tiny").state_dict(), path)
    monkeypatch.setattr(zoo, "bundled_path", lambda entry: path)
    assert zoo.load_model("tiny", device="cpu").instance_decoder is None


def test_a_bundled_decoder_is_known_to_the_zoo_without_reading_the_file(monkeypatch):
    from dataclasses import replace

    from napari_sam.engine.models.model_profile import profile

    assert "tiny" not in zoo.decoder_models() and not profile("tiny").has_decoder  # today's weights have none
    monkeypatch.setitem(zoo.REGISTRY, "tiny", replace(zoo.REGISTRY["tiny"], bundled_decoder=True))
    assert "tiny" in zoo.decoder_models() and profile("tiny").has_decoder
