"""AutoSettings: the one set of automatic-segmentation settings, checked once."""

from __future__ import annotations

import inspect

import pytest

from dataclasses import replace

from napari_sam.engine.automatic.settings import BATCH_DEFAULTS, DEFAULTS, AutoSettings
from napari_sam.errors import InvalidImageError, InvalidParameterError


@pytest.mark.parametrize("kw, match", [
    ({"points_per_side": 0}, "points_per_side"),
    ({"points_per_side": 2.5}, "points_per_side"),
    ({"points_per_batch": 0}, "points_per_batch"),
    ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
    ({"stability_score_thresh": -0.1}, "stability_score_thresh"),
    ({"min_mask_region_area": -1}, "min_mask_region_area"),
    ({"method": "watershed"}, "Unknown automatic method"),
    ({"halo": (8, 8)}, "give tile_shape too"),
])
def test_bad_settings_are_refused_naming_the_field(kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        AutoSettings(**kw)


def test_tile_and_default_halo_are_checked_once():
    s = AutoSettings(tile_shape=[256, 128])
    assert s.tile_shape == (256, 128) and s.halo == (32, 16)  # an eighth of the tile
    assert AutoSettings(tile_shape=64, halo=4).halo == (4, 4)
    with pytest.raises(InvalidImageError, match="larger than twice the halo"):
        AutoSettings(tile_shape=(64, 64), halo=(32, 0))
    assert hash(s) == hash(AutoSettings(tile_shape=(256, 128)))  # frozen and hashable: a per-process cache key
    assert s.describe()["tile_shape"] == [256, 128]


def test_the_generator_the_cli_and_the_widgets_share_the_defaults():
    from napari_sam.cli import build_parser
    from napari_sam.engine.automatic.amg import SamAutomaticMaskGenerator

    params = inspect.signature(SamAutomaticMaskGenerator).parameters
    for name, value in DEFAULTS.resolved(has_decoder=False).amg_kwargs().items():  # a model without its own values
        assert params[name].default == value, name
    args = build_parser().parse_args(["segment", "in.tif", "--out", "o.zarr"])
    assert args.points_per_side == BATCH_DEFAULTS.points_per_side
    # thresholds and method: the model's unless given
    assert (args.method, args.pred_iou_thresh, args.stability_score_thresh, args.min_area) == ("auto", None, None, None)
    assert BATCH_DEFAULTS.method is None and BATCH_DEFAULTS.pred_iou_thresh is None
    # batch runs differ from the generator's defaults only in leaving out specks
    assert BATCH_DEFAULTS == replace(DEFAULTS, min_mask_region_area=BATCH_DEFAULTS.min_mask_region_area)


def test_segment_stack_refuses_two_different_tiles_and_settings_with_a_callable(tmp_path):
    import numpy as np

    from napari_sam.engine.batch.run import segment_stack_blocking
    from napari_sam.engine.automatic.slice_segmenter import otsu_labels

    img = np.zeros((2, 32, 32), np.uint8)
    with pytest.raises(InvalidParameterError, match="disagree"):
        segment_stack_blocking(img, tmp_path / "a.zarr", axes="zyx", tile=(16, 16), settings=AutoSettings(tile_shape=(32, 32)))
    with pytest.raises(InvalidParameterError, match="callable takes none"):
        segment_stack_blocking(img, tmp_path / "b.zarr", axes="zyx", segment_slice=otsu_labels, settings=DEFAULTS)
