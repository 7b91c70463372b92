"""Axis meaning and channel choice: multichannel images are never read as slices; ambiguity is refused."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam import Segmenter
from napari_sam.cli import main
from napari_sam.engine.automatic.slice_segmenter import otsu_labels
from napari_sam.engine.batch.run import open_labels, segment_stack_blocking
from napari_sam.engine.images.channels import select_channels
from napari_sam.errors import InvalidImageError


def _two_channels(cells_image):
    """(H, W, 2): channel 0 the cells, channel 1 noise."""
    img, _ = cells_image
    noise = np.random.default_rng(3).integers(0, 4000, img.shape).astype(np.uint16)
    return np.stack([img, noise], axis=-1)


def test_trailing_two_channels_are_refused_not_read_as_slices(cells_image):
    both = _two_channels(cells_image)
    with pytest.raises(InvalidImageError, match=r"channel=0.*--channel 0"):
        select_channels(both)
    with pytest.raises(InvalidImageError, match="--channel"):
        Segmenter(model=None if False else _tiny()).set_image(both)
    arr, rgb = select_channels(both[..., :1])
    assert arr.shape == both.shape[:2] and rgb is False


def _tiny():
    from napari_sam.model import build_sam

    return build_sam("tiny")


def test_channel_choice_and_composite(cells_image):
    both = _two_channels(cells_image)
    np.testing.assert_array_equal(select_channels(both, channel=1)[0], both[..., 1])
    mean, _ = select_channels(both, channel="mean")
    np.testing.assert_allclose(mean, both.mean(axis=-1))
    np.testing.assert_allclose(select_channels(both, channel=[0, 1])[0], mean)
    with pytest.raises(InvalidImageError, match="out of range"):
        select_channels(both, channel=2)
    first = np.moveaxis(both, -1, 0)
    with pytest.raises(InvalidImageError, match=r"2 channels.*channel=0 \.\. 1.*--axes ZYX"):
        select_channels(first, axes="cyx")
    lazy = zarr.array(first, chunks=(1, 100, 100))
    picked, _ = select_channels(lazy, axes="CYX", channel=0)
    assert not isinstance(picked, np.ndarray)  # read lazily, chunk by chunk
    np.testing.assert_array_equal(np.asarray(picked), both[..., 0])
    with pytest.raises(InvalidImageError, match="no known channel axis"):
        select_channels(both[..., 0], channel=0)


def test_segmenter_on_a_channel_equals_the_channel_alone(tiny_model, cells_image):
    both = _two_channels(cells_image)
    seg = Segmenter(model=tiny_model)
    seg.set_image(both[..., 0])
    want = seg.segment(points=[(50, 60)], multimask=False)
    seg.set_image(both, channel=0)
    assert seg.n_slices == 1
    np.testing.assert_array_equal(seg.segment(points=[(50, 60)], multimask=False), want)
    seg.set_image(np.moveaxis(both, -1, 0), axes="cyx", channel=0)
    assert seg.n_slices == 1
    np.testing.assert_array_equal(seg.segment(points=[(50, 60)], multimask=False), want)


def test_channel_first_tiff_uses_the_files_axes_in_the_cli(tmp_path, cells_image, capsys):
    both = np.moveaxis(_two_channels(cells_image), -1, 0)
    cyx = np.concatenate([both, both[:1]])  # 3 channels: the classic (3, Y, X) that looked like 3 slices
    tifffile.imwrite(tmp_path / "c.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "one.tif", cyx[0])
    common = ["--point", "50", "60", "--model", "tiny", "--device", "cpu"]
    assert main(["predict", str(tmp_path / "c.tif"), "--out", str(tmp_path / "x.tif"), *common]) == 2
    err = capsys.readouterr().err
    assert "3 channels" in err and "--channel" in err and "--axes ZYX" in err
    assert main(["predict", str(tmp_path / "c.tif"), "--out", str(tmp_path / "a.tif"), "--channel", "0", *common]) == 0
    assert main(["predict", str(tmp_path / "one.tif"), "--out", str(tmp_path / "b.tif"), *common]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif"))
    # the user says they are slices: then a slice must be chosen (limits then span all three slices)
    assert main(["predict", str(tmp_path / "c.tif"), "--out", str(tmp_path / "z.tif"), "--axes", "ZYX", *common]) == 2
    assert "slice" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "c.tif"), "--out", str(tmp_path / "z.tif"), "--axes", "ZYX",
                 "--slice", "0", *common]) == 0
    assert tifffile.imread(tmp_path / "z.tif").shape == cyx.shape[1:]


def test_segment_stack_and_cli_segment_pick_a_channel(tmp_path, cells_image, capsys):
    both = _two_channels(cells_image)
    stack = np.stack([both, both[::-1]])  # (Z, Y, X, 2)
    want = segment_stack_blocking(stack[..., 0], tmp_path / "want.zarr", segment_slice=otsu_labels, axes="zyx")
    got = segment_stack_blocking(stack, tmp_path / "got.zarr", segment_slice=otsu_labels, axes="zyxc", channel=0)
    np.testing.assert_array_equal(open_labels(got.path)[:], open_labels(want.path)[:])
    with pytest.raises(InvalidImageError, match="--channel"):
        segment_stack_blocking(stack, tmp_path / "no.zarr", segment_slice=otsu_labels, axes="zyxc")
    tifffile.imwrite(tmp_path / "two.tif", both)
    assert main(["segment", str(tmp_path / "two.tif"), "--out", str(tmp_path / "o.tif"), "--quiet"]) == 2
    assert "--channel" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.tif.partial.zarr").exists()


# ---- a short leading axis with nothing saying what it is: channels or slices? refused ------------------------
def _cyx(cells_image, n=3):
    """(n, Y, X): channel 0 the cells, the others noise (or, read as slices, n unlike slices)."""
    both = np.moveaxis(_two_channels(cells_image), -1, 0)
    return np.concatenate([both, both[1:]] * n)[:n]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_short_leading_axis_without_metadata_is_refused_in_the_api(tiny_model, cells_image, tmp_path, n):
    cyx = _cyx(cells_image, n)
    for array in (cyx, zarr.array(cyx)):
        with pytest.raises(InvalidImageError, match=r"axes='zyx'.*--axes ZYX.*axes='cyx'.*channel=K.*--axes CYX --channel K"):
            Segmenter(model=tiny_model).set_image(array)
    with pytest.raises(InvalidImageError, match="--axes CYX --channel K"):
        segment_stack_blocking(cyx, tmp_path / "o.zarr", segment_slice=otsu_labels)
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(InvalidImageError, match=r"axes='tzyx'.*axes='czyx'"):  # (C?, Z, Y, X): which is which?
        select_channels(np.stack([cyx] * 6, axis=1))
    # what resolves it: axes given (slices, or channels with a channel choice)
    seg = Segmenter(model=tiny_model)
    seg.set_image(cyx, axes="zyx")
    assert seg.n_slices == n
    seg.set_image(cyx, axes="cyx", channel=0)
    assert seg.n_slices == 1
    np.testing.assert_array_equal(np.asarray(seg.image), cyx[0])


def test_long_leading_axis_and_single_planes_are_slices_as_before(cells_image):
    img, _ = cells_image
    arr, rgb = select_channels(np.stack([img] * 5))
    assert arr.shape == (5, *img.shape) and rgb is None
    assert select_channels(img[None])[0].shape == (1, *img.shape)
    assert select_channels(np.stack([img] * 3, axis=-1))[0].shape == (*img.shape, 3)  # RGB(A) last: colour


def test_short_leading_axis_in_a_tiff_without_axes_is_refused_in_the_cli(tmp_path, cells_image, capsys):
    cyx = _cyx(cells_image)
    tifffile.imwrite(tmp_path / "plain.tif", cyx, photometric="minisblack")  # axes unknown ('QYX')
    tifffile.imwrite(tmp_path / "pages.tif", cyx, photometric="minisblack", metadata=None)  # pages only ('IYX')
    tifffile.imwrite(tmp_path / "zyx.tif", cyx, photometric="minisblack", metadata={"axes": "ZYX"})
    model = ["--model", "tiny", "--device", "cpu"]
    for name in ("plain.tif", "pages.tif"):
        src = str(tmp_path / name)
        for argv in (["predict", src, "--out", str(tmp_path / "m.tif"), "--point", "50", "60", *model],
                     ["segment", src, "--out", str(tmp_path / "s.tif"), "--quiet"],
                     ["embed", src, "--cache", str(tmp_path / "cache"), *model, "--quiet"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "--axes ZYX" in err and "--axes CYX --channel K" in err, err
    assert not any((tmp_path / n).exists() for n in ("m.tif", "s.tif", "s.tif.partial.zarr", "cache"))
    # the user says what the axis is, or the file does
    point = ["--point", "50", "60", *model]
    assert main(["predict", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "c0.tif"), "--axes", "CYX",
                 "--channel", "0", *point]) == 0
    tifffile.imwrite(tmp_path / "one.tif", cyx[0])
    assert main(["predict", str(tmp_path / "one.tif"), "--out", str(tmp_path / "want.tif"), *point]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "c0.tif"), tifffile.imread(tmp_path / "want.tif"))
    for src, extra in (("plain.tif", ["--axes", "ZYX"]), ("zyx.tif", [])):
        assert main(["predict", str(tmp_path / src), "--out", str(tmp_path / f"z_{src}"), "--slice", "0",
                     *extra, *point]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "z_plain.tif"), tifffile.imread(tmp_path / "z_zyx.tif"))
