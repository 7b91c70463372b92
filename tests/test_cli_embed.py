"""``napari-sam embed``: precompute into a cache that a later Segmenter finds."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam import Segmenter
from napari_sam.cli import main


def _stack():
    rng = np.random.default_rng(3)
    base = np.zeros((2, 40, 70))
    base[:, 10:30, 20:50] = 1500
    return rng.poisson(base + 100).astype(np.uint16)


def test_embed_then_segmenter_finds_cache(tiny_model, tiny_checkpoint, tmp_path, capsys):
    data = _stack()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "ZYX"})
    cache = tmp_path / "cache"
    rc = main(["embed", str(path), "--cache", str(cache), "--model", tiny_checkpoint,
               "--tile", "48", "48", "--halo", "8", "8", "--device", "cpu", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "4 embeddings cached" in out and "2 tile(s) of 48x48" in out
    seg = Segmenter(model=tiny_model, device="cpu", tile_shape=(48, 48), halo=(8, 8), cache_dir=cache)
    seg.set_image(data, axes="zyx")
    assert seg.has_embedding(0) and seg.has_embedding(1)
    calls = []
    seg.predictor.encode = lambda x: calls.append(x) or (_ for _ in ()).throw(AssertionError("encoder ran"))
    mask = seg.segment(points=[(20, 35)], slice_index=1)
    assert mask.shape == (40, 70) and not calls
    # running again computes nothing
    assert main(["embed", str(path), "--cache", str(cache), "--model", tiny_checkpoint,
                 "--tile", "48", "48", "--halo", "8", "8", "--device", "cpu", "--quiet"]) == 0
    assert "0 computed now" in capsys.readouterr().out


def test_embed_bad_inputs(tiny_checkpoint, tmp_path, capsys):
    assert main(["embed", str(tmp_path / "missing.tif"), "--cache", str(tmp_path / "c"),
                 "--model", tiny_checkpoint]) == 2
    assert "not found" in capsys.readouterr().err
    np.save(tmp_path / "line.npy", np.zeros(100, np.uint8))
    assert main(["embed", str(tmp_path / "line.npy"), "--cache", str(tmp_path / "c"),
                 "--model", tiny_checkpoint]) == 2
    assert "fewer than 2 dimensions" in capsys.readouterr().err
    np.save(tmp_path / "img.npy", np.zeros((32, 32), np.uint8))
    assert main(["embed", str(tmp_path / "img.npy"), "--cache", str(tmp_path / "c"),
                 "--model", tiny_checkpoint, "--tile", "16", "16", "--halo", "8", "8"]) == 2
    assert "twice the halo" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["embed", str(tmp_path / "img.npy"), "--cache", str(blocker / "c"),
                 "--model", tiny_checkpoint, "--quiet"]) == 2
    assert "cannot be written" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", str(tmp_path / "img.npy")])  # --cache is required
