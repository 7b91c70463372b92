"""Instance decoders in the zoo and the automatic-segmentation path that uses them.

Nothing is downloaded from the internet: entries point at a local HTTP server
serving random-weight files the tests write (see test_zoo.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.engine.models import zoo
from napari_sam.errors import CheckpointError, DownloadError, NoDecoderError
from napari_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig
from test_zoo import isolated_cache, server  # noqa: F401  (fixtures: local server, temporary cache)

xxhash = pytest.importorskip("xxhash")


def _xxh128(path: Path) -> str:
    return "xxh128:" + xxhash.xxh128(path.read_bytes()).hexdigest()


def _decoder_file(path: Path, embed_dim: int = 128, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(InstanceDecoder(InstanceDecoderConfig(embed_dim=embed_dim, initial_features=8)).state_dict(), path)
    return path


@pytest.fixture()
def ais_entry(server, tiny_checkpoint, monkeypatch):  # noqa: F811
    """A zoo entry 'test_tiny_ais': the tiny random encoder plus a random decoder, both served locally."""
    enc = server.root / "tiny.pt"
    enc.write_bytes(Path(tiny_checkpoint).read_bytes())
    dec = _decoder_file(server.root / "tiny_decoder.pt")
    entry = zoo.ModelEntry(
        name="test_tiny_ais", architecture="tiny", description="random tiny model with a decoder", source="tests",
        license="BSD-3-Clause", url=server.url("tiny.pt"), filename="test_tiny.pt", known_hash=_xxh128(enc),
        decoder=zoo.DecoderFile(url=server.url("tiny_decoder.pt"), filename="test_tiny_decoder.pt",
                                known_hash=_xxh128(dec), source="tests"),
    )
    monkeypatch.setitem(zoo.REGISTRY, entry.name, entry)
    return entry


# --- registry -----------------------------------------------------------------------------------

def test_ten_published_decoders_paired_with_their_encoders():
    with_decoder = {e.name: e for e in zoo.list_models(include_unavailable=True) if e.decoder is not None}
    assert sorted(with_decoder) == sorted([
        "vit_b_lm", "vit_l_lm", "vit_t_lm", "vit_b_em_organelles", "vit_l_em_organelles", "vit_t_em_organelles",
        "vit_b_histopathology", "vit_l_histopathology", "vit_h_histopathology", "vit_b_medical_imaging",
    ])
    assert zoo.decoder_models() == list(with_decoder)
    files = [e.filename for e in zoo.list_models(include_unavailable=True) if e.filename]
    files += [e.decoder.filename for e in with_decoder.values()]
    assert len(files) == len(set(files))
    for e in with_decoder.values():
        assert e.decoder.url.startswith("https://") and e.decoder.url != e.url
        assert e.decoder.known_hash.startswith("xxh128:") and len(e.decoder.known_hash) == 7 + 32
        assert e.known_hash.startswith("xxh128:")
    # the BioImage.IO packages hold the decoder beside the encoder, named after it
    assert with_decoder["vit_b_lm"].decoder.url.endswith("/diplomatic-bug/1.2/files/vit_b_decoder.pt")
    assert with_decoder["vit_h_histopathology"].architecture == "vit_h"
    for name in ("vit_b", "vit_l", "vit_h", "vit_t", "tiny"):
        assert zoo.REGISTRY[name].decoder is None


def test_models_command_says_which_models_have_a_decoder(capsys, tmp_path, monkeypatch):
    from napari_sam.cli import main

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {ln.split()[0]: ln.split()[2] for ln in lines[2:] if ln.split() and ln.split()[0] in zoo.REGISTRY}
    assert row["vit_b_lm"] == "yes" and row["vit_b_histopathology"] == "yes" and row["vit_b"] == "-"
    assert any("instance decoder" in ln for ln in lines)


# --- loading ------------------------------------------------------------------------------------

def test_zoo_model_brings_its_decoder(ais_entry, server):
    model = zoo.load_model("test_tiny_ais", progressbar=False)
    assert model.has_instance_decoder
    served = torch.load(server.root / "tiny_decoder.pt", weights_only=True)
    own = model.instance_decoder.state_dict()
    assert set(own) == set(served) and all(torch.equal(own[k], served[k]) for k in served)
    assert not model.instance_decoder.training
    assert "/tiny_decoder.pt" in server.requests


def test_without_decoder_nothing_is_fetched(ais_entry, server):
    model = zoo.load_model("test_tiny_ais", progressbar=False, with_decoder=False)
    assert not model.has_instance_decoder
    assert "/tiny_decoder.pt" not in server.requests


def test_attached_decoder_does_not_change_the_embedding_fingerprint(ais_entry):
    from napari_sam.engine.store.fingerprint import model_fingerprint

    with_dec = zoo.load_model("test_tiny_ais", progressbar=False)
    without = zoo.load_model("test_tiny_ais", progressbar=False, with_decoder=False)
    assert model_fingerprint(with_dec) == model_fingerprint(without)


def test_decoder_with_a_wrong_hash_is_refused(ais_entry, monkeypatch):
    bad = dataclasses.replace(ais_entry, decoder=dataclasses.replace(ais_entry.decoder, known_hash="xxh128:" + "0" * 32))
    monkeypatch.setitem(zoo.REGISTRY, bad.name, bad)
    with pytest.raises(DownloadError, match="instance decoder of 'test_tiny_ais'.*with_decoder=False"):
        zoo.load_model(bad.name, progressbar=False)


def test_decoder_of_another_encoder_is_refused(ais_entry, server, monkeypatch):
    dec = _decoder_file(server.root / "wide_decoder.pt", embed_dim=256)
    wide = dataclasses.replace(ais_entry, decoder=zoo.DecoderFile(
        url=server.url("wide_decoder.pt"), filename="wide_decoder.pt", known_hash=_xxh128(dec), source="tests"))
    monkeypatch.setitem(zoo.REGISTRY, wide.name, wide)
    with pytest.raises(CheckpointError, match="256-channel embeddings.*gives 128 channels"):
        zoo.load_model(wide.name, progressbar=False)


def test_truncated_cached_decoder_is_fetched_again(ais_entry, isolated_cache):  # noqa: F811
    zoo.load_model("test_tiny_ais", progressbar=False)
    cached = isolated_cache / "test_tiny_decoder.pt"
    data = cached.read_bytes()
    cached.write_bytes(data[: len(data) // 2])
    model = zoo.load_model("test_tiny_ais", progressbar=False)
    assert model.has_instance_decoder and cached.read_bytes() == data


def test_truncated_decoder_download_is_a_clear_error(ais_entry, server, monkeypatch):
    data = (server.root / "tiny_decoder.pt").read_bytes()
    (server.root / "cut_decoder.pt").write_bytes(data[: len(data) // 3])
    cut = dataclasses.replace(ais_entry, decoder=zoo.DecoderFile(
        url=server.url("cut_decoder.pt"), filename="cut_decoder.pt", known_hash=None, source="tests"))
    monkeypatch.setitem(zoo.REGISTRY, cut.name, cut)  # no hash: only the strict load can notice
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        zoo.load_model(cut.name, progressbar=False)


def test_local_checkpoint_with_decoder_file_and_micro_sam_layout(tmp_path, tiny_checkpoint):
    dec_path = _decoder_file(tmp_path / "dec.pt")
    model = zoo.load_model(Path(tiny_checkpoint), decoder=dec_path)
    assert model.has_instance_decoder
    assert not zoo.load_model(Path(tiny_checkpoint)).has_instance_decoder
    sam = torch.load(tiny_checkpoint, weights_only=True)
    combined = {"model_state": {"sam." + k: v for k, v in sam.items()},
                "decoder_state": torch.load(dec_path, weights_only=True)}
    torch.save(combined, tmp_path / "combined.pt")
    model = zoo.load_model(tmp_path / "combined.pt")
    assert model.has_instance_decoder
    # napari-sam's own state dict of a model with its decoder attached loads back whole
    torch.save(model.state_dict(), tmp_path / "own.pt")
    again = zoo.load_model(tmp_path / "own.pt")
    assert again.has_instance_decoder
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


# --- the automatic path -------------------------------------------------------------------------

def test_segment_with_decoder(ais_entry, cells_image):
    from napari_sam.engine.automatic.instance_decoder import decoder_maps, segment_with_decoder, \
        segment_with_decoder_steps
    from napari_sam.engine.automatic.instance_maps import InstanceMapSettings, labels_from_maps
    from napari_sam.engine.prediction.predictor import SamPredictor
    from napari_sam.model.instance_decoder import to_image_frame

    model = zoo.load_model("test_tiny_ais", progressbar=False)
    image, _ = cells_image  # uint16 (200, 240)
    settings = InstanceMapSettings(foreground_threshold=0.3, center_distance_threshold=0.9,
                                   boundary_distance_threshold=0.9)
    steps = []
    labels = segment_with_decoder(model, image, settings=settings, callback=steps.append)
    assert labels.shape == image.shape and labels.dtype == np.int32
    assert [p.done for p in steps] == [0, 1, 2, 3]

    predictor = SamPredictor(model)
    predictor.set_image(image)
    emb = predictor.get_embedding()
    with torch.no_grad():
        expected_maps = to_image_frame(model.instance_decoder(emb.features), 256, emb.input_size, emb.original_size)
    maps = decoder_maps(model, emb)
    assert maps.shape == (3, *image.shape) and maps.dtype == np.float32
    assert np.allclose(maps, expected_maps[0].numpy(), atol=1e-6)
    assert np.array_equal(labels, labels_from_maps(*maps, settings))
    gen = segment_with_decoder_steps(model, embedding=emb, settings=settings)
    assert [p.done for p in gen] == [1, 2, 3]  # no embedding step when the embedding is given
    assert np.array_equal(segment_with_decoder(model, embedding=emb, settings=settings), labels)


def test_model_without_decoder_is_a_clear_error(tiny_model):
    from napari_sam.engine.automatic.instance_decoder import segment_with_decoder

    with pytest.raises(NoDecoderError, match="no instance decoder.*vit_b_lm.*automatic mask generation"):
        segment_with_decoder(tiny_model, np.zeros((32, 32), np.uint8))


def test_recommended_post_processing_travels_with_the_decoder():
    from napari_sam.engine.automatic.instance_maps import InstanceMapSettings, recommended_settings

    assert recommended_settings("vit_b_lm") == InstanceMapSettings(
        center_distance_threshold=0.4, boundary_distance_threshold=0.5, distance_smoothing=2.0, min_size=100)
    assert recommended_settings("vit_b_em_organelles").center_distance_threshold == 0.3
    assert recommended_settings("vit_b_histopathology") == InstanceMapSettings()  # none published
    assert recommended_settings("vit_b") == InstanceMapSettings() == recommended_settings(None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_decoder_weights_are_refused(tmp_path, tiny_checkpoint, bad):
    """An instance decoder with NaN/inf weights is refused at load, like the SAM it is attached to."""
    from napari_sam.model.instance_decoder import read_instance_decoder

    state = torch.load(_decoder_file(tmp_path / "dec.pt"), weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel())
    state[name].view(-1)[0] = bad
    torch.save(state, tmp_path / "diverged_dec.pt")
    with pytest.raises(CheckpointError, match=rf"NaN or infinite.*{name}"):
        read_instance_decoder(tmp_path / "diverged_dec.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        zoo.load_model(Path(tiny_checkpoint), decoder=tmp_path / "diverged_dec.pt")
    sam = torch.load(tiny_checkpoint, weights_only=True)  # micro-sam layout: the decoder inside the checkpoint
    torch.save({"model_state": {"sam." + k: v for k, v in sam.items()}, "decoder_state": state},
               tmp_path / "combined.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        zoo.load_model(tmp_path / "combined.pt")
