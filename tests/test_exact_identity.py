"""Cached embeddings and resumed batch slices are identified by a hash of exactly their pixels;
custom slice functions by their code, closure and arguments, not only their name."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from napari_sam import Segmenter
from napari_sam.engine.batch import run as batch
from napari_sam.engine.batch.run import open_labels, segment_stack, segment_stack_blocking
from napari_sam.engine.automatic.slice_segmenter import describe, otsu_labels
from napari_sam.engine.store.fingerprint import callable_identity, pixel_hash
from napari_sam.errors import OutputExistsError


def _moved_cell(cells_image):
    """The cells image and a copy where one cell moved to an empty corner (an edit far from the others)."""
    img, lab = cells_image
    edited = img.copy()
    edited[lab == 4] = np.median(img)
    edited[150:190, 5:45] = img[130:170, 160:200]
    return img, edited


def _fresh_mask(tiny_model, image, **kw):
    seg = Segmenter(model=tiny_model, **kw)
    seg.set_image(image)
    return seg.segment(points=[(170, 25)], multimask=False)


def test_pixel_hash_sees_every_pixel():
    a = np.zeros((512, 512), np.uint16)
    b = a.copy()
    b[301, 77] = 1
    assert pixel_hash(a) != pixel_hash(b) and pixel_hash(a) == pixel_hash(a.copy())
    assert pixel_hash(a) != pixel_hash(a.astype(np.int16)) != pixel_hash(a.reshape(256, 1024))


def test_disk_cache_entry_of_edited_pixels_is_recomputed(tiny_model, cells_image, tmp_path):
    """Same cache identity (as a sampled fingerprint missing the edit would give): the stale entry is not used."""
    img, edited = _moved_cell(cells_image)
    scale = 255.0 / max(img.max(), edited.max())  # uint8: the same (no) intensity limits before and after
    img, edited = (img * scale).astype(np.uint8), (edited * scale).astype(np.uint8)
    seg = Segmenter(model=tiny_model, cache_dir=tmp_path)
    seg.set_image(img, image_id="same")
    seg.segment(points=[(170, 25)])
    seg2 = Segmenter(model=tiny_model, cache_dir=tmp_path)
    seg2.set_image(edited, image_id="same")
    got = seg2.segment(points=[(170, 25)], multimask=False)
    want = _fresh_mask(tiny_model, edited, cache_dir=tmp_path / "fresh")
    np.testing.assert_array_equal(got, want)


def test_in_place_edit_recomputes_only_the_tiles_it_touched(tiny_model, cells_image, monkeypatch):
    img, edited = _moved_cell(cells_image)
    scale = 255.0 / max(img.max(), edited.max())  # uint8: no intensity limits, which an edit would move
    data, edited = (img * scale).astype(np.uint8), (edited * scale).astype(np.uint8)
    seg = Segmenter(model=tiny_model, tile_shape=128, halo=16)
    seg.set_image(data)
    seg.ensure_embedding()
    n_tiles = len(seg.tile_grid)
    encoded = []
    original = seg.predictor.set_image
    monkeypatch.setattr(seg.predictor, "set_image", lambda crop, **kw: (encoded.append(crop.shape), original(crop, **kw)))
    data[150:190, 5:45] = edited[150:190, 5:45]  # the user edits the array the Segmenter holds
    got = seg.segment(points=[(170, 25)], multimask=False)
    assert 1 <= len(encoded) < n_tiles
    np.testing.assert_array_equal(got, _fresh_mask(tiny_model, data.copy(), tile_shape=128, halo=16))
    assert seg.has_embedding()
    data[0, 239] += 100
    assert not seg.has_embedding()


def _stack(n_z=6):  # longer than an ambiguous (channels?) leading axis
    from skimage.draw import disk

    img = np.full((n_z, 48, 64), 100, np.uint16)
    for z in range(n_z):
        img[z][disk((20, 20 + 4 * z), 8, shape=img.shape[1:])] = 1000
    return img


def _interrupt(img, out, fn, after=2):
    gen = segment_stack(img, out, segment_slice=fn)
    for p in gen:
        if p.message.startswith("segmented") and p.done == after:
            break
    gen.close()


def test_resume_redoes_slices_whose_input_changed(tmp_path, monkeypatch):
    # The job's input identity stands for a sampled fingerprint that does not see the edit.
    monkeypatch.setattr(batch, "input_fingerprint", lambda stack, source: {"shape": list(stack.shape)})
    img = _stack()
    out = tmp_path / "r.zarr"
    _interrupt(img, out, otsu_labels)
    img[0, 30:40, 40:60] = 1000  # a new object on a slice already done
    r = segment_stack_blocking(img, out, segment_slice=otsu_labels)
    assert r.resumed_slices == 1
    fresh = segment_stack_blocking(img, tmp_path / "fresh.zarr", segment_slice=otsu_labels)
    np.testing.assert_array_equal(open_labels(out)[:], open_labels(fresh.path)[:])


def test_resume_with_another_function_of_the_same_name_is_refused(tmp_path):
    img = _stack()
    out = tmp_path / "f.zarr"
    _interrupt(img, out, lambda im: otsu_labels(im))
    with pytest.raises(OutputExistsError, match="different job"):
        segment_stack_blocking(img, out, segment_slice=lambda im: otsu_labels(im) * 2)
    _interrupt(img, tmp_path / "p.zarr", functools.partial(np.multiply, 1))
    with pytest.raises(OutputExistsError, match="different job"):
        segment_stack_blocking(img, tmp_path / "p.zarr", segment_slice=functools.partial(np.multiply, 2))
    r = segment_stack_blocking(img, tmp_path / "p.zarr", segment_slice=functools.partial(np.multiply, 1))
    assert r.resumed_slices == 2


def test_unidentifiable_function_is_not_resumed(tmp_path):
    class Opaque:  # no stable identity: not plain values
        __slots__ = ()

    def make(state):
        return lambda im: otsu_labels(im) if state else None

    fn = make(Opaque())
    assert describe(fn)["code"] is None and callable_identity(otsu_labels) is not None
    img = _stack()
    _interrupt(img, tmp_path / "u.zarr", fn)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        segment_stack_blocking(img, tmp_path / "u.zarr", segment_slice=fn)
    assert segment_stack_blocking(img, tmp_path / "u.zarr", segment_slice=fn, overwrite=True).resumed_slices == 0


def test_closure_values_are_part_of_the_identity():
    def make(t):
        return lambda im: im > t

    assert callable_identity(make(3)) == callable_identity(make(3)) != callable_identity(make(4))
