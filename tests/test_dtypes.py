"""One dtype rule for every entry point: bool images are read as 0/1, non-numeric dtypes are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from napari_sam import SamPredictor, Segmenter
from napari_sam.cli import main
from napari_sam.engine.automatic.settings import BATCH_DEFAULTS
from napari_sam.engine.batch.run import open_labels, segment_stack_blocking
from napari_sam.errors import InvalidImageError


def _mask(shape=(64, 80)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[16:40, 20:52] = True
    return m


BAD = {
    "complex128": lambda m: m.astype(np.complex128),
    "<U1": lambda m: np.where(m, "a", "b"),
    "object": lambda m: m.astype(object),
}


def test_bool_image_is_the_same_as_its_0_255_image_in_every_api(tiny_model, tiny_checkpoint, tmp_path):
    mask = _mask()
    as_u8 = mask.astype(np.uint8) * 255
    p = SamPredictor(tiny_model)
    p.set_image(as_u8)
    want, _, _ = p.predict(np.array([[30.0, 28.0]]), np.array([1]), multimask_output=False)
    p.set_image(mask)
    got, _, _ = p.predict(np.array([[30.0, 28.0]]), np.array([1]), multimask_output=False)
    np.testing.assert_array_equal(got, want)

    seg = Segmenter(model=tiny_model)
    seg.set_image(np.stack([mask, mask]), axes="zyx")  # used to fail deep in numpy ("boolean subtract")
    np.testing.assert_array_equal(seg.segment(points=[(28, 30)], slice_index=1, multimask=False), want[0])

    kw = dict(model=tiny_checkpoint, device="cpu", axes="zyx", settings=replace(BATCH_DEFAULTS, points_per_side=2))
    a = segment_stack_blocking(np.stack([mask, mask]), tmp_path / "b.zarr", **kw)
    b = segment_stack_blocking(np.stack([as_u8, as_u8]), tmp_path / "u.zarr", **kw)
    np.testing.assert_array_equal(open_labels(a.path)[:], open_labels(b.path)[:])

    tifffile.imwrite(tmp_path / "mask.tif", np.stack([mask, mask]))
    assert main(["segment", str(tmp_path / "mask.tif"), "--out", str(tmp_path / "c.zarr"), "--model",
                 tiny_checkpoint, "--device", "cpu", "--points-per-side", "2", "--axes", "ZYX", "--quiet"]) == 0
    np.testing.assert_array_equal(open_labels(tmp_path / "c.zarr")[:], open_labels(a.path)[:])


@pytest.mark.parametrize("name", sorted(BAD))
def test_non_numeric_dtypes_are_refused_everywhere_naming_the_dtype(name, tiny_model, tmp_path):
    img = BAD[name](_mask())
    match = f"dtype {np.dtype(img.dtype)}"
    with pytest.raises(InvalidImageError, match=match):
        SamPredictor(tiny_model).set_image(img)
    with pytest.raises(InvalidImageError, match=match):
        Segmenter(model=tiny_model).set_image(img)
    with pytest.raises(InvalidImageError, match=match):
        segment_stack_blocking(np.stack([img, img]), tmp_path / "x.zarr", model="tiny", device="cpu", axes="zyx")
    assert not (tmp_path / "x.zarr").exists()


def test_complex_message_says_what_to_do(tiny_model):
    with pytest.raises(InvalidImageError, match=r"np\.abs"):
        Segmenter(model=tiny_model).set_image(_mask().astype(np.complex64))


def test_cli_refuses_a_complex_tiff(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "c.tif", _mask().astype(np.complex64))
    assert main(["predict", str(tmp_path / "c.tif"), "--out", str(tmp_path / "o.tif"), "--point", "5", "5",
                 "--model", "tiny", "--device", "cpu"]) == 2
    assert "complex64" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()
