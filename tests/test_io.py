"""Lazy inputs: TIFF/OME-TIFF and zarr/OME-Zarr readers, dask and multiscale data, never read whole."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam import Segmenter
from napari_sam.engine.store.fingerprint import image_fingerprint
from napari_sam.engine.images.io import open_image
from napari_sam.errors import InvalidImageError


def _stack(n=4, h=40, w=50):
    return (np.arange(n * h * w, dtype=np.uint32).reshape(n, h, w) % 4093).astype(np.uint16)


def test_tiff_is_opened_lazily(tmp_path):
    data = _stack()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, tile=(16, 16), photometric="minisblack", metadata={"axes": "ZYX"})
    img = open_image(path)
    assert isinstance(img.data, zarr.Array)  # backed by the file, not loaded
    assert img.shape == data.shape and img.axes == "zyx"
    np.testing.assert_array_equal(img.data[2, 5:9, 7:30], data[2, 5:9, 7:30])


def test_pyramidal_ome_tiff_gives_level0(tmp_path):
    data = _stack(1, 64, 64)[0]
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=1, tile=(16, 16), metadata={"axes": "YX"})
        tw.write(data[::2, ::2], subfiletype=1, tile=(16, 16))
    img = open_image(path)
    assert len(img.levels) == 2 and img.shape == (64, 64) and img.levels[1].shape == (32, 32)
    np.testing.assert_array_equal(img.data[...], data)


def test_ome_zarr_multiscales_level0(tmp_path):
    data = _stack()
    root = zarr.open_group(tmp_path / "img.ome.zarr", mode="w", zarr_format=3)
    root.create_array("s0", data=data, chunks=(1, 20, 25))
    root.create_array("s1", data=data[:, ::2, ::2], chunks=(1, 20, 25))
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": [{"name": "z"}, {"name": "y"}, {"name": "x"}],
                         "datasets": [{"path": "s0"}, {"path": "s1"}]}],
    }
    img = open_image(tmp_path / "img.ome.zarr")
    assert img.axes == "zyx" and img.shape == data.shape and len(img.levels) == 2
    np.testing.assert_array_equal(img.data[1], data[1])
    # NGFF 0.4 (zarr v2) spells it at the top level
    root2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    root2.create_array("0", data=data, chunks=(1, 40, 50))
    root2.attrs["multiscales"] = [{"axes": ["z", "y", "x"], "datasets": [{"path": "0"}]}]
    assert open_image(tmp_path / "v2.zarr").shape == data.shape


def test_plain_zarr_array_and_bad_paths(tmp_path):
    data = _stack()
    zarr.save_array(tmp_path / "a.zarr", data)
    assert open_image(tmp_path / "a.zarr").shape == data.shape
    with pytest.raises(InvalidImageError, match="not found"):
        open_image(tmp_path / "missing.tif")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")  # a truncated PNG
    with pytest.raises(InvalidImageError, match="Cannot read image"):
        open_image(tmp_path / "x.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(InvalidImageError, match="TIFF"):
        open_image(tmp_path / "x.bmp")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InvalidImageError, match="Cannot read TIFF"):
        open_image(tmp_path / "bad.tif")
    group = zarr.open_group(tmp_path / "two.zarr", mode="w")
    group.create_array("a", shape=(4, 4), dtype="u1")
    group.create_array("b", shape=(4, 4), dtype="u1")
    with pytest.raises(InvalidImageError, match="multiscales"):
        open_image(tmp_path / "two.zarr")


class CountingSource:
    """Array-like that counts reads and refuses to be read whole (stands in for a huge lazy array)."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.pixels_read = 0

    def __getitem__(self, key):
        out = self._data[key]
        if out.size == self._data.size and self._data.shape[0] > 1:
            raise AssertionError("the whole array was read")
        self.pixels_read += out.size
        return out


def test_dask_stack_is_never_computed_whole(tiny_model):
    da = pytest.importorskip("dask.array")
    data = (np.random.default_rng(0).random((40, 64, 64)) * 3000).astype(np.uint16)
    source = CountingSource(data)
    arr = da.from_array(source, chunks=(1, 64, 64), asarray=False)
    fp = image_fingerprint(arr, full_hash_bytes=0)
    assert source.pixels_read < data.size / 2  # sampled, never everything
    seg = Segmenter(model=tiny_model, tile_shape=(48, 48), halo=8)
    seg.set_image(arr)
    source.pixels_read = 0
    mask = seg.segment(points=[(20, 20)], slice_index=7)
    assert mask.shape == (64, 64)
    # intensity limits read 8 slices, the prediction one tile of one slice
    assert source.pixels_read <= 8 * 64 * 64 + 64 * 64
    assert fp == image_fingerprint(arr, full_hash_bytes=0)


def test_multiscale_list_uses_level0(tiny_model):
    data = _stack(2, 64, 64)
    seg = Segmenter(model=tiny_model)
    seg.set_image([data, data[:, ::2, ::2]], axes="zyx")
    assert seg.spatial_shape == (64, 64) and seg.leading_shape == (2,)


def test_big_arrays_are_fingerprinted_from_samples():
    data = np.zeros((40, 600, 600), np.uint8)
    source = CountingSource(data)
    a = image_fingerprint(source, full_hash_bytes=2**20)
    assert 0 < source.pixels_read < data.size / 3
    data[39, 300, 300] = 7  # inside the centre window of a sampled slice
    assert image_fingerprint(CountingSource(data), full_hash_bytes=2**20) != a
    # below the size limit every pixel counts, whatever the container
    assert image_fingerprint(CountingSource(data)) == image_fingerprint(data)
    small = np.zeros((4, 8, 8), np.uint8)
    b = image_fingerprint(small)
    small[1, 3, 3] = 1  # small arrays are hashed whole
    assert image_fingerprint(small) != b
    assert image_fingerprint(small.astype(np.uint16)) != image_fingerprint(small)
