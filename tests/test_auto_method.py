"""One automatic path: method ais / amg / auto, the model's own thresholds, tiled AIS, bad input.

Most tests use a random-weight ``tiny`` model with a random decoder attached; where the
result must contain known objects, the decoder's maps are replaced by "perfect" maps
computed from the image crop the decoder was shown (:func:`perfect_maps`), so the
tiling, stitching, watershed and batch plumbing are what is under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_sam.cli import main
from napari_sam.engine.automatic import instance_decoder as ais
from napari_sam.engine.automatic import slice_segmenter
from napari_sam.engine.automatic.instance_maps import InstanceMapSettings
from napari_sam.engine.automatic.settings import BATCH_DEFAULTS, FALLBACK, AutoSettings
from napari_sam.engine.batch.run import open_labels, segment_stack, segment_stack_blocking
from napari_sam.engine.models.auto_defaults import TINY_NOTE
from napari_sam.engine.models.model_profile import profile
from napari_sam.errors import CheckpointError, NoDecoderError, OutputExistsError
from reference_models import two_disc_stack

LOOSE = InstanceMapSettings(foreground_threshold=0.3, center_distance_threshold=0.9, boundary_distance_threshold=0.9)


def _with_decoder(model, embed_dim: int | None = None, seed: int = 0):
    from napari_sam.engine.models.instance_decoders import attach, embed_dim_of
    from napari_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig

    torch.manual_seed(seed)
    cfg = InstanceDecoderConfig(embed_dim=embed_dim or embed_dim_of(model), initial_features=8)
    attach(model, InstanceDecoder(cfg))
    return model


@pytest.fixture(scope="module")
def ais_checkpoint(tmp_path_factory, tiny_checkpoint) -> Path:
    """A checkpoint file of the random tiny model with a random instance decoder in it."""
    from napari_sam.engine.models.zoo import load_model

    model = _with_decoder(load_model(Path(tiny_checkpoint), device="cpu"))
    path = tmp_path_factory.mktemp("ais") / "tiny_with_decoder.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ais_model(ais_checkpoint):
    from napari_sam.engine.models.zoo import load_model

    return load_model(ais_checkpoint, device="cpu")


class _Crop:
    """What the fake predictor hands to the fake decoder: the crop itself."""

    def __init__(self, image):
        self.image = image


@pytest.fixture()
def perfect_decoder(monkeypatch):
    """Replace the encoder + decoder by maps computed from the crop they see (bright = object):
    foreground, distance to the object's centre and to its boundary, each normalised per object."""
    seen = []

    class Predictor:
        def __init__(self, model, options=None):
            self.crop = None

        def set_image(self, image, intensity_limits=None):
            self.crop = np.asarray(image)
            seen.append(self.crop.shape[:2])

        def get_embedding(self):
            return _Crop(self.crop)

        def reset_image(self):
            self.crop = None

    monkeypatch.setattr(ais, "SamPredictor", Predictor)
    monkeypatch.setattr(ais, "decoder_maps", lambda model, emb: perfect_maps(emb.image))
    return seen


def perfect_maps(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    gray = image.mean(axis=-1) if image.ndim == 3 else image
    fg = gray > (gray.min() + gray.max()) / 2 if gray.max() > gray.min() else gray > 100  # uniform: bright = object
    objects, n = ndimage.label(fg)
    centre = np.ones(fg.shape, np.float32)
    boundary = np.ones(fg.shape, np.float32)
    rows, cols = np.indices(fg.shape)
    for i in range(1, n + 1):
        m = objects == i
        r, c = ndimage.center_of_mass(m)
        d = np.hypot(rows - r, cols - c)[m]
        centre[m] = d / max(d.max(), 1)
        inside = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1][m]
        boundary[m] = 1 - inside / max(inside.max(), 1)
    return np.stack([fg.astype(np.float32), centre, boundary])


def _discs(shape, centres, radius):
    from skimage.draw import disk

    truth = np.zeros(shape, np.int32)
    for i, c in enumerate(centres, start=1):
        truth[disk(c, radius, shape=shape)] = i
    return np.where(truth > 0, 220, 20).astype(np.uint8), truth


# ---- method and the model's thresholds --------------------------------------------------------
def test_auto_method_is_the_decoder_when_the_model_has_one(tiny_checkpoint, ais_checkpoint):
    assert AutoSettings().resolved(has_decoder=True).method == "ais"
    assert AutoSettings().resolved(has_decoder=False).method == "amg"
    assert AutoSettings(method="amg").resolved(has_decoder=True).method == "amg"
    assert profile(str(ais_checkpoint)).has_decoder and not profile(str(tiny_checkpoint)).has_decoder
    assert profile("vit_b_lm").has_decoder and not profile("vit_b").has_decoder  # from the zoo, no download
    with pytest.raises(NoDecoderError, match=r"'vit_b' has no instance decoder.*vit_b_lm.*napari-sam models.*'amg'"):
        profile("vit_b").resolve(AutoSettings(method="ais"))


def test_the_models_thresholds_are_used_unless_the_user_gives_one():
    lm = profile("vit_b_lm").resolve(AutoSettings())
    assert (lm.method, lm.center_distance_threshold, lm.boundary_distance_threshold, lm.distance_smoothing,
            lm.min_size) == ("ais", 0.4, 0.5, 2.0, 100)  # micro-sam's values for its decoder
    amg = profile("vit_b_lm").resolve(AutoSettings(method="amg"))
    assert (amg.pred_iou_thresh, amg.stability_score_thresh) == (0.65, 0.7)
    mine = profile("vit_b_lm").resolve(AutoSettings(center_distance_threshold=0.6, min_size=7))
    assert (mine.center_distance_threshold, mine.min_size, mine.boundary_distance_threshold) == (0.6, 7, 0.5)
    sam = profile("vit_b").resolve(AutoSettings())
    assert (sam.pred_iou_thresh, sam.stability_score_thresh) == (FALLBACK["pred_iou_thresh"], 0.95)
    tiny = profile("tiny").resolve(AutoSettings(method="amg"))
    assert tiny.pred_iou_thresh < 0.88 and tiny.stability_score_thresh < 0.95  # SAM's do not suit tiny
    # what a batch job records: the method and only the fields it uses
    d = lm.describe()
    assert d["method"] == "ais" and "pred_iou_thresh" not in d and "points_per_side" not in d
    assert "center_distance_threshold" not in amg.describe()


def test_batch_job_records_the_resolved_method_and_thresholds(tmp_path, otsu_model, ais_checkpoint):
    img, _ = two_disc_stack(2, (40, 48))
    r = segment_stack_blocking(img, tmp_path / "lm.zarr", axes="zyx", model="vit_b_lm")  # the zoo entry: nothing downloaded
    job = zarr.open_group(str(r.path), mode="r").attrs["napari_sam_job"]["job"]["segmenter"]
    assert (job["kind"], job["method"], job["center_distance_threshold"], job["min_size"]) == ("sam-ais", "ais", 0.4, 100)
    assert otsu_model[-1].settings.method == "ais" and otsu_model[-1].settings.is_resolved
    r = segment_stack_blocking(img, tmp_path / "vb.zarr", axes="zyx", model="vit_b",
                               settings=AutoSettings(pred_iou_thresh=0.5, min_mask_region_area=64))
    job = zarr.open_group(str(r.path), mode="r").attrs["napari_sam_job"]["job"]["segmenter"]
    assert (job["method"], job["pred_iou_thresh"], job["stability_score_thresh"]) == ("amg", 0.5, 0.95)


def test_a_resume_with_another_method_is_refused(tmp_path, otsu_model, ais_checkpoint):
    img, _ = two_disc_stack(4, (40, 48))
    out = tmp_path / "o.zarr"
    gen = segment_stack(img, out, axes="zyx", model=str(ais_checkpoint), settings=AutoSettings(method="amg"))
    next(gen), next(gen)
    gen.close()  # interrupted after one slice
    with pytest.raises(OutputExistsError):
        segment_stack_blocking(img, out, axes="zyx", model=str(ais_checkpoint))  # auto = ais for this model
    r = segment_stack_blocking(img, out, axes="zyx", model=str(ais_checkpoint), settings=AutoSettings(method="amg"))
    assert r.resumed_slices >= 1  # the same method resumes


# ---- tiled AIS ---------------------------------------------------------------------------------
def test_tiled_and_untiled_agree_on_a_slice_that_fits_one_tile(ais_model, cells_image):
    image, _ = cells_image  # uint16 (200, 240)
    whole = ais.segment_with_decoder(ais_model, image, settings=LOOSE)
    tiled = ais.segment_with_decoder(ais_model, image, settings=LOOSE, tile_shape=(256, 256), halo=(32, 32))
    np.testing.assert_array_equal(tiled, whole)
    several = ais.segment_with_decoder(ais_model, image, settings=LOOSE, tile_shape=(128, 128), halo=(16, 16))
    assert several.shape == image.shape and several.dtype == np.int32


def test_an_object_crossing_tile_borders_is_one_object(perfect_decoder, ais_model):
    # 4 x 4 tiles of 96 px with a 32 px halo over 288 x 288: discs on the seams and on a tile corner
    image, truth = _discs((288, 288), [(144, 144), (40, 100), (230, 60), (100, 230)], 22)
    steps = []
    model = ais_model  # its decoder is attached; its maps are the perfect ones
    tiled = ais.segment_with_decoder(model, image, tile_shape=(96, 96), halo=(32, 32), callback=steps.append)
    assert len(perfect_decoder) > 4 and all(s[0] <= 96 and s[1] <= 96 for s in perfect_decoder)  # really tiled
    whole = ais.segment_with_decoder(model, image)
    assert tiled.max() == whole.max() == 4  # one object per disc, none split at a seam
    for i in range(1, 5):
        ids = np.unique(tiled[truth == i])
        assert len(ids) == 1 and ids[0] > 0
        assert ((tiled == ids[0]) == (truth == i)).mean() > 0.99
    assert any("tile 16/" in p.message for p in steps)


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [None, (128, 128)])
def test_empty_and_full_slices(perfect_decoder, ais_model, tile):
    model = ais_model
    empty = ais.segment_with_decoder(model, np.zeros((100, 90), np.uint8), tile_shape=tile)
    assert empty.shape == (100, 90) and empty.dtype == np.int32 and empty.max() == 0
    full = ais.segment_with_decoder(model, np.full((100, 90), 200, np.uint8), tile_shape=tile)
    assert full.max() == 1 and (full == 1).all()
    # with tiles smaller than the slice, an empty slice stays empty (an object much larger than the
    # tile's context can be split: see docs/batch-cli.md)
    assert ais.segment_with_decoder(model, np.zeros((100, 90), np.uint8), tile_shape=(48, 48)).max() == 0


def test_a_stack_with_empty_slices_links_across_them_correctly(tmp_path, ais_checkpoint, perfect_decoder):
    img, truth = two_disc_stack(5, (40, 48))
    img[2] = 20  # an empty (dark) slice in the middle
    truth[2] = 0
    img = img.astype(np.uint16)
    r = segment_stack_blocking(img, tmp_path / "o.zarr", axes="zyx", model=str(ais_checkpoint), device="cpu",
                               settings=AutoSettings(method="ais", min_size=5))
    labels = open_labels(r.path)[:]
    assert labels[2].max() == 0
    # two objects before the gap, two new ones after it (linking needs overlap on adjacent slices)
    assert r.n_objects == 4
    for z in (0, 1, 3, 4):
        assert len(np.unique(labels[z])) == 3


def test_decoder_of_another_encoder_is_a_clear_error_and_nothing_is_written(tmp_path, tiny_checkpoint):
    from napari_sam.engine.models.zoo import load_model

    model = _with_decoder(load_model(Path(tiny_checkpoint), device="cpu"))
    _with_decoder(model, embed_dim=64)  # attached by hand, the wrong width
    with pytest.raises(CheckpointError, match="belongs to another model"):
        ais.segment_with_decoder(model, np.zeros((32, 32), np.uint8))
    # a checkpoint carrying a decoder of another width: refused before the output exists
    bad = {k: v for k, v in model.state_dict().items()}
    torch.save(bad, tmp_path / "bad.pt")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="another model"):
        segment_stack_blocking(np.zeros((2, 32, 32), np.uint8), tmp_path / "o.zarr", axes="zyx", model=str(tmp_path / "bad.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ais_on_a_model_without_decoder_names_the_models_and_writes_nothing(tmp_path, tiny_checkpoint, capsys):
    import tifffile

    img, _ = two_disc_stack(2, (40, 48))
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    code = main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "o.tif"), "--model", tiny_checkpoint,
                 "--method", "ais", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no instance decoder" in err and "vit_b_lm" in err and "amg" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_the_bundled_model_says_what_it_is_in_one_line(tmp_path, otsu_model, capsys, monkeypatch):
    import tifffile

    monkeypatch.delenv("NAPARI_SAM_MODEL", raising=False)
    img, _ = two_disc_stack(1, (40, 48))
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "a.tif"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count(TINY_NOTE) == 1 and "\n" not in TINY_NOTE and "vit_b_lm" in TINY_NOTE
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "b.tif"), "--model", "vit_b",
                 "--quiet"]) == 0
    assert TINY_NOTE not in capsys.readouterr().err


def test_cli_method_and_thresholds_reach_the_settings(tmp_path, otsu_model):
    import tifffile

    img, _ = two_disc_stack(1, (40, 48))
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "a.tif"), "--model", "vit_b_lm",
                 "--center-distance-thresh", "0.3", "--quiet"]) == 0
    s = otsu_model[-1].settings
    assert (s.method, s.center_distance_threshold, s.boundary_distance_threshold, s.min_size) == ("ais", 0.3, 0.5, 100)
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(tmp_path / "b.tif"), "--model", "vit_b_lm",
                 "--method", "amg", "--min-area", "10", "--quiet"]) == 0
    s = otsu_model[-1].settings
    assert (s.method, s.pred_iou_thresh, s.min_mask_region_area) == ("amg", 0.65, 10)
    assert BATCH_DEFAULTS.min_mask_region_area == 64


# ---- Dask ----------------------------------------------------------------------------------------
def test_ais_stack_on_dask_equals_the_local_run(tmp_path, ais_checkpoint, perfect_decoder):
    distributed = pytest.importorskip("distributed")
    img, truth = two_disc_stack(4, (40, 48))
    settings = AutoSettings(method="ais", min_size=5)
    slice_segmenter._CACHE.clear()
    local = segment_stack_blocking(img, tmp_path / "local.zarr", axes="zyx", model=str(ais_checkpoint), device="cpu",
                                   settings=settings)
    # an in-process cluster: tasks run on worker threads of this process (the fake maps apply there too)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        remote = segment_stack_blocking(img, tmp_path / "remote.zarr", axes="zyx", model=str(ais_checkpoint), device="cpu",
                                        settings=settings, client=client)
    slice_segmenter._CACHE.clear()
    np.testing.assert_array_equal(open_labels(remote.path)[:], open_labels(local.path)[:])
    assert remote.n_objects == local.n_objects == 2
    job = zarr.open_group(str(remote.path), mode="r").attrs["napari_sam_job"]["job"]["segmenter"]
    assert job["method"] == "ais"


# ---- reuse of a Segmenter's embedding ---------------------------------------------------------
def test_a_segmenters_slice_reuses_its_embedding_with_the_same_labels(ais_model, cells_image):
    """The decoder on a slice the Segmenter has embedded (a click, a precompute) runs no encoder
    pass, keeps what it computes for the clicks after it, and gives label_slice_steps' labels."""
    from napari_sam.engine.automatic.slice_segmenter import label_segmenter_slice_steps, label_slice_steps
    from napari_sam.engine.prediction.segmenter import Segmenter
    from napari_sam.engine.progress import run_blocking
    from sam2_state import EncoderCalls

    image, _ = cells_image
    stack = np.stack([image, image[::-1], image[:, ::-1]])  # uint16 (3, 200, 240)
    loose = AutoSettings(method="ais", foreground_threshold=0.3, center_distance_threshold=0.9,
                         boundary_distance_threshold=0.9)
    seg = Segmenter(model=ais_model)
    seg.set_image(stack, axes="zyx")
    calls = EncoderCalls(ais_model)
    try:
        first = run_blocking(label_segmenter_slice_steps(seg, 1, loose))
        assert calls.n == 1 and seg.has_embedding(1)  # computed once and kept for clicks
        again = run_blocking(label_segmenter_slice_steps(seg, 1, loose))
        assert calls.n == 1  # reused
        seg.ensure_embedding(2)  # as a click on slice 2 does
        other = run_blocking(label_segmenter_slice_steps(seg, 2, loose))
        assert calls.n == 2
        fresh = [run_blocking(label_slice_steps(ais_model, stack[z], loose, intensity_limits=seg.intensity_limits()))
                 for z in (1, 2)]
        assert calls.n == 4  # the plain path encodes each time
        grid = run_blocking(label_segmenter_slice_steps(seg, 1, AutoSettings(method="amg", points_per_side=4)))
        assert calls.n == 5 and grid.shape == image.shape  # grid prompts run their own encoder pass
    finally:
        calls.close()
    assert first.max() > 0
    np.testing.assert_array_equal(first, fresh[0])
    np.testing.assert_array_equal(again, fresh[0])
    np.testing.assert_array_equal(other, fresh[1])
