"""The default model: ``$NAPARI_SAM_MODEL``, else a light-microscopy model already downloaded with its
decoder (complete and hash-verified), else the bundled ``tiny``. Nothing is downloaded: the cache is a
temporary folder and the zoo's micro-sam entries are replaced by test entries whose files the tests write.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.engine.models import default_model, zoo
from napari_sam.engine.models.auto_defaults import TINY_NOTE
from napari_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig

xxhash = pytest.importorskip("xxhash")


def _xxh128(path: Path) -> str:
    return "xxh128:" + xxhash.xxh128(path.read_bytes()).hexdigest()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty weights cache; offline (a download attempt would fail); no env override."""
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NAPARI_SAM_OFFLINE", "1")
    monkeypatch.setenv("NAPARI_SAM_DEVICE", "cpu")
    monkeypatch.delenv("NAPARI_SAM_MODEL", raising=False)
    folder = tmp_path / "cache" / "models"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture()
def download(cache, tiny_checkpoint, monkeypatch):
    """``download(name)`` puts a loadable model (the random tiny encoder plus a random decoder) into the
    cache as zoo model ``name``, registered with the files' own hashes, as if it had been downloaded."""

    def put(name: str, seed: int = 0) -> zoo.ModelEntry:
        enc = cache / f"test_{name}.pt"
        enc.write_bytes(Path(tiny_checkpoint).read_bytes())
        dec = cache / f"test_{name}_decoder.pt"
        torch.manual_seed(seed)
        torch.save(InstanceDecoder(InstanceDecoderConfig(embed_dim=128, initial_features=8)).state_dict(), dec)
        real = zoo.REGISTRY[name]
        entry = dataclasses.replace(
            real, architecture="tiny", filename=enc.name, known_hash=_xxh128(enc), size=enc.stat().st_size,
            decoder=dataclasses.replace(real.decoder, filename=dec.name, known_hash=_xxh128(dec)),
        )
        monkeypatch.setitem(zoo.REGISTRY, name, entry)
        return entry

    return put


def test_nothing_downloaded_means_tiny(cache):
    assert zoo.default_model_name() == "tiny"
    assert sorted(p.name for p in cache.iterdir()) == []  # and nothing was fetched or written


def test_a_downloaded_light_microscopy_model_becomes_the_default(download):
    download("vit_l_lm")
    assert zoo.default_model_name() == "vit_l_lm"
    download("vit_b_lm")
    assert zoo.default_model_name() == "vit_b_lm"  # vit_b_lm first, as micro-sam recommends


def test_preference_order_b_then_t_then_l(download):
    download("vit_l_lm")
    download("vit_t_lm")
    assert zoo.default_model_name() == "vit_t_lm"
    assert default_model.DOWNLOADED_PREFERENCE == ("vit_b_lm", "vit_t_lm", "vit_l_lm")


def test_other_downloaded_models_do_not_change_the_default(download, cache):
    entry = download("vit_b_em_organelles")  # a model with a decoder, but not for light microscopy
    assert (cache / entry.filename).is_file()
    assert zoo.default_model_name() == "tiny"


def test_an_encoder_without_its_decoder_is_not_the_default(download, cache):
    entry = download("vit_b_lm")
    (cache / entry.decoder.filename).unlink()
    assert zoo.default_model_name() == "tiny"


@pytest.mark.parametrize("damage", ["truncated", "same size, other bytes", "decoder flipped"])
def test_a_damaged_download_is_not_the_default(download, cache, caplog, damage):
    entry = download("vit_b_lm")
    target = cache / (entry.decoder.filename if damage == "decoder flipped" else entry.filename)
    data = bytearray(target.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert zoo.default_model_name() == "tiny"
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "vit_b_lm" in message and str(target) in message and "nothing is wrong with it" in message
    assert target.read_bytes() == bytes(data)  # deciding the default never touches the cache


def test_a_wrong_registered_hash_is_not_the_default(download, monkeypatch):
    entry = download("vit_b_lm")
    monkeypatch.setitem(zoo.REGISTRY, "vit_b_lm", dataclasses.replace(entry, known_hash="xxh128:" + "0" * 32))
    assert zoo.default_model_name() == "tiny"


def test_the_environment_variable_overrides(download, monkeypatch):
    download("vit_b_lm")
    monkeypatch.setenv("NAPARI_SAM_MODEL", "tiny")
    assert zoo.default_model_name() == "tiny"
    monkeypatch.setenv("NAPARI_SAM_MODEL", "vit_l_lm")  # not downloaded: the user asked for it
    assert zoo.default_model_name() == "vit_l_lm"


def test_every_caller_goes_through_the_one_default(download):
    from napari_sam.engine.models.model_profile import profile, tiny_note

    assert tiny_note(None) == TINY_NOTE and profile(None).name == "tiny"
    download("vit_b_lm")
    assert tiny_note(None) is None  # the bundled-model note goes away with the bundled model
    assert profile(None).name == "vit_b_lm" and profile(None).has_decoder
    model = zoo.load_model()  # scripting: no name, offline, from the cache
    assert model.model_type == "tiny" and model.has_instance_decoder


def test_segment_without_a_model_uses_the_downloaded_one(download, tmp_path, capsys):
    import tifffile
    import zarr

    from napari_sam.cli import main

    download("vit_b_lm")
    img = np.zeros((1, 48, 56), np.uint8)
    img[:, 10:30, 12:34] = 200
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.zarr"), "--quiet"]) == 0
    assert TINY_NOTE not in capsys.readouterr().err
    job = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["napari_sam_job"]["job"]["segmenter"]
    assert (job["model"], job["method"]) == ("vit_b_lm", "ais")  # its decoder, by default


def test_the_model_option_overrides(download, tmp_path, capsys):
    import tifffile
    import zarr

    from napari_sam.cli import main

    download("vit_b_lm")
    img = np.zeros((1, 40, 40), np.uint8)
    img[:, 8:24, 8:24] = 200
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    out = tmp_path / "out.zarr"
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(out), "--model", "tiny", "--quiet",
                 "--points-per-side", "4"]) == 0
    assert TINY_NOTE in capsys.readouterr().err
    assert zarr.open_group(str(out), mode="r").attrs["napari_sam_job"]["job"]["segmenter"]["model"] == "tiny"


def test_the_widgets_model_list_selects_the_default(download, qapp):
    from napari_sam.widgets.model_picker import ModelPicker

    picker = ModelPicker()
    picker.select_default()
    assert picker.combo.value == "tiny"
    download("vit_b_lm")
    picker.select_default()
    assert picker.spec() == "vit_b_lm"
    picker.combo.value = "tiny"  # the user's choice stands
    assert picker.spec() == "tiny"


def test_a_damaged_first_choice_gives_way_to_the_next_downloaded_one(download, cache, caplog):
    b = download("vit_b_lm")
    download("vit_t_lm")
    (cache / b.filename).write_bytes(b"half a file")
    with caplog.at_level(logging.WARNING):
        assert zoo.default_model_name() == "vit_t_lm"
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "'vit_b_lm'" in message and "'vit_t_lm' is used instead" in message
