"""The npe2 reader opens TIFF and zarr lazily (no whole-file read)."""

from __future__ import annotations

import numpy as np
import tifffile
import zarr

from napari_sam.adapters.reader import get_reader


def test_reader_claims_tiff_and_zarr_only(tmp_path):
    assert get_reader(str(tmp_path / "a.png")) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    assert get_reader(str(tmp_path / "a.tif")) is not None
    assert get_reader(str(tmp_path / "a.zarr")) is not None


def test_tiff_stack_is_lazy_and_exact(tmp_path):
    stack = np.random.default_rng(0).integers(0, 4000, (5, 64, 48), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    (data, kwargs, kind), = get_reader(str(path))(str(path))
    assert kind == "image" and kwargs["multiscale"] is False
    assert not isinstance(data, np.ndarray)  # file-backed, not loaded
    np.testing.assert_array_equal(np.asarray(data[2]), stack[2])


def test_zarr_store(tmp_path):
    arr = zarr.open_array(tmp_path / "img.zarr", mode="w", shape=(32, 40), chunks=(16, 16), dtype="uint8")
    arr[:] = 7
    (data, kwargs, _), = get_reader(str(tmp_path / "img.zarr"))(str(tmp_path / "img.zarr"))
    assert data.shape == (32, 40) and int(np.asarray(data[3, 4])) == 7


def test_unreadable_file_gives_no_layers(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    assert get_reader(str(bad))(str(bad)) == []
