"""Automatic mask generation: segment everything in a 2D image from a grid of point prompts.

Same parameters, same output records and - with the same weights - the same
masks as the reference ``segment_anything.SamAutomaticMaskGenerator``:

1. for each crop (the whole image, plus overlapping crops if ``crop_n_layers``
   > 0) embed the crop and decode a grid of single-point prompts, three masks
   per point, ``points_per_batch`` points at a time;
2. drop masks whose predicted IoU is <= ``pred_iou_thresh``, then masks whose
   stability score (IoU of the mask thresholded at +-``stability_score_offset``)
   is < ``stability_score_thresh``, then masks touching a crop edge that is not
   an image edge;
3. box non-maximum suppression within each crop (score: predicted IoU), then
   across crops (score: the smaller crop wins);
4. optionally remove islands and holes smaller than ``min_mask_region_area``
   and suppress new duplicates.

Faster than the reference at equal results: the IoU filter runs on the
low-resolution logits, so only surviving masks are upscaled to full
resolution (the filter is per mask, so this changes nothing); upscaling runs
in chunks; masks are kept cropped to their boxes instead of as run-length
codes of the whole image; and the run-length encoding, when asked for, is
vectorised.

Image input: anything :func:`napari_sam.engine.images.normalize.to_uint8_rgb` accepts
((H, W) grayscale, (H, W, 1|3|4), uint8/uint16/float); uint8 RGB is used as is.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ...errors import InvalidImageError, InvalidParameterError
from ...model.sam import Sam
from .amg_grid import build_all_layer_point_grids, generate_crop_boxes
from .label_image import clean_local_mask, paint_label_image
from .settings import DEFAULTS, FALLBACK, AutoSettings, check_amg_values
from .nms import box_nms
from .mask_data import (
    MaskRecords,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    is_box_near_crop_edge,
    local_to_full,
    mask_to_rle,
    masks_to_local,
)
from ..images.normalize import to_uint8_rgb
from ..models.device import InferenceOptions
from ..prediction.predictor import Embedding, SamPredictor
from ..progress import Progress, relay, run_blocking

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Upscale at most this many low-res masks to full resolution at once (bounds memory: n * H * W * 4 bytes).
_UPSCALE_CHUNK = 16


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return box_nms(boxes.float(), scores.float(), iou_threshold)


class SamAutomaticMaskGenerator:
    """Segment everything in an image with a grid of point prompts.

    Args:
        model: a :class:`napari_sam.model.sam.Sam` (e.g. from ``build_sam``/``load_model``).
        points_per_side: grid points per image side (points_per_side**2 prompts);
            ``None`` when ``point_grids`` is given.
        points_per_batch: prompts decoded together (memory vs. speed).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: logit offset used for the stability score.
        box_nms_thresh: box IoU above which a lower-scoring mask of the same crop is dropped.
        crop_n_layers: extra layers of crops; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for suppressing duplicates between crops.
        crop_overlap_ratio: overlap of the first crop layer, as a fraction of the short image side.
        crop_n_points_downscale_factor: points per side in layer i are divided by this**i.
        point_grids: explicit (N, 2) (x, y) grids in [0, 1], one per crop layer.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this many pixels, and
            leave out of label images (:meth:`generate_labels`) objects with fewer visible pixels.
        output_mode: ``"binary_mask"`` ((H, W) bool), ``"uncompressed_rle"`` or ``"coco_rle"``
            (needs pycocotools).
        options: how the model runs (device, precision, compile): pass the interactive
            predictor's ``options`` so automatic runs use the precision the user chose;
            ``None`` resolves the defaults (:meth:`InferenceOptions.resolve`).
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = DEFAULTS.points_per_side,
        points_per_batch: int = DEFAULTS.points_per_batch,
        pred_iou_thresh: float = FALLBACK["pred_iou_thresh"],
        stability_score_thresh: float = FALLBACK["stability_score_thresh"],
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = DEFAULTS.min_mask_region_area,
        output_mode: str = "binary_mask",
        *,
        options: InferenceOptions | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise InvalidParameterError(
                "Give exactly one of points_per_side (a regular grid) or point_grids (explicit grids); "
                f"got points_per_side={points_per_side!r} and point_grids={'None' if point_grids is None else 'a list'}."
            )
        if not isinstance(crop_n_layers, int) or crop_n_layers < 0:
            raise InvalidParameterError(f"crop_n_layers must be an int >= 0, got {crop_n_layers!r}.")
        check_amg_values(points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
                         min_mask_region_area)
        if points_per_side is not None:
            if not isinstance(crop_n_points_downscale_factor, int) or crop_n_points_downscale_factor < 1:
                raise InvalidParameterError(
                    f"crop_n_points_downscale_factor must be an int >= 1, got {crop_n_points_downscale_factor!r}."
                )
            grids = build_all_layer_point_grids(int(points_per_side), crop_n_layers, crop_n_points_downscale_factor)
            if any(len(g) == 0 for g in grids):
                raise InvalidParameterError(
                    f"points_per_side={points_per_side} with crop_n_points_downscale_factor="
                    f"{crop_n_points_downscale_factor} leaves a crop layer without points; lower the factor."
                )
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) < crop_n_layers + 1:
                raise InvalidParameterError(
                    f"point_grids has {len(grids)} grid(s) but crop_n_layers={crop_n_layers} needs "
                    f"{crop_n_layers + 1} (one per layer)."
                )
            for i, g in enumerate(grids):
                if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0 or g.min() < 0 or g.max() > 1:
                    raise InvalidParameterError(
                        f"point_grids[{i}] must be a non-empty (N, 2) array of (x, y) in [0, 1]; "
                        f"got shape {g.shape}."
                    )
        if output_mode not in OUTPUT_MODES:
            raise InvalidParameterError(f"Unknown output_mode {output_mode!r}; choose one of {', '.join(OUTPUT_MODES)}.")
        if output_mode == "coco_rle":
            try:
                from pycocotools import mask as _  # noqa: F401
            except ImportError:
                raise InvalidParameterError(
                    "output_mode='coco_rle' needs pycocotools (pip install pycocotools); "
                    "or use output_mode='uncompressed_rle'."
                ) from None

        self.predictor = SamPredictor(model, options=options)
        self.point_grids = grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.settings: AutoSettings | None = None  # set by from_settings: tiling for label_slice_iter

    @classmethod
    def from_settings(cls, model: Sam, settings: AutoSettings = DEFAULTS, *,
                      options: InferenceOptions | None = None) -> SamAutomaticMaskGenerator:
        """The generator for checked :class:`~napari_sam.engine.automatic.settings.AutoSettings`
        (their ``tile_shape``/``halo`` go to :meth:`generate_labels`: see :meth:`label_slice`).
        Thresholds left at None get :data:`~napari_sam.engine.automatic.settings.FALLBACK` (SAM's);
        resolve the settings for the model first (:meth:`AutoSettings.resolved`) to get the model's."""
        if settings.method not in (None, "amg"):
            raise InvalidParameterError(f"Settings for method {settings.method!r} cannot run the grid-prompt generator.")
        if not settings.is_resolved:
            settings = replace(settings, method="amg").resolved(has_decoder=False)
        amg = cls(model, **settings.amg_kwargs(), options=options)
        amg.settings = settings
        return amg

    def label_slice_iter(self, image: np.ndarray, intensity_limits: tuple[float, float] | None = None,
                         ) -> Generator[Progress, None, np.ndarray]:
        """:meth:`generate_labels_iter` tiled as this generator's settings say (whole image without settings)."""
        s = self.settings
        tile, halo = (None, None) if s is None else (s.tile_shape, s.halo)
        return (yield from self.generate_labels_iter(image, intensity_limits, tile_shape=tile, halo=halo))

    # ---- public API ----------------------------------------------------------------------------
    def generate(
        self,
        image: np.ndarray,
        intensity_limits: tuple[float, float] | None = None,
        embedding: Embedding | None = None,
    ) -> list[dict[str, Any]]:
        """Masks of everything in ``image``, as the reference's list of records.

        Args:
            image: (H, W) or (H, W, C) image (see module docstring for dtypes).
            intensity_limits: (low, high) for non-uint8 images (e.g. limits of a whole stack).
            embedding: the precomputed embedding of the whole image (skips the encoder
                for the first crop); must come from this model and this image.
        Returns:
            one dict per mask: ``segmentation`` ((H, W) bool or an RLE dict), ``area``
            (int), ``bbox`` ([x, y, w, h]), ``predicted_iou``, ``point_coords``
            ([[x, y]]), ``stability_score``, ``crop_box`` ([x, y, w, h]).
        """
        return run_blocking(self.generate_iter(image, intensity_limits, embedding))

    def generate_iter(
        self,
        image: np.ndarray,
        intensity_limits: tuple[float, float] | None = None,
        embedding: Embedding | None = None,
    ) -> Generator[Progress, None, list[dict[str, Any]]]:
        """:meth:`generate` as a generator yielding :class:`Progress` per batch of prompts."""
        records, shape = yield from self._records_iter(image, intensity_limits, embedding)
        return self._to_annotations(records, shape)

    def generate_labels(
        self,
        image: np.ndarray,
        intensity_limits: tuple[float, float] | None = None,
        embedding: Embedding | None = None,
        tile_shape: int | tuple[int, int] | None = None,
        halo: int | tuple[int, int] | None = None,
    ) -> np.ndarray:
        """An (H, W) int32 instance label image (0 = background, ids 1..K without gaps).

        Where masks overlap, the mask with the higher predicted IoU keeps the
        pixels (it is painted last); masks left without pixels are dropped.

        Args:
            tile_shape: segment a large image tile by tile (outer crops of this
                (rows, cols) shape, see :mod:`napari_sam.engine.prediction.tiling`); ``None``
                segments the whole image at once.
            halo: context (pixels) around each tile's inner region (default: an
                eighth of the tile). A mask belongs to the tile whose inner region
                holds the centre of its box, so an object cut by a tile border is
                taken whole from the tile that sees it with context, and never
                twice; objects larger than about ``halo`` may still be cut by the
                outer crop edge.
        """
        return run_blocking(self.generate_labels_iter(image, intensity_limits, embedding, tile_shape, halo))

    def generate_labels_iter(
        self,
        image: np.ndarray,
        intensity_limits: tuple[float, float] | None = None,
        embedding: Embedding | None = None,
        tile_shape: int | tuple[int, int] | None = None,
        halo: int | tuple[int, int] | None = None,
    ) -> Generator[Progress, None, np.ndarray]:
        """:meth:`generate_labels` as a generator yielding :class:`Progress`."""
        if tile_shape is not None:
            if embedding is not None:
                raise InvalidParameterError("Give either a whole-image embedding or tile_shape, not both.")
            return (yield from self._tiled_labels_iter(image, intensity_limits, tile_shape, halo))
        records, shape = yield from self._records_iter(image, intensity_limits, embedding)
        n = len(records)
        return paint_label_image(
            records["masks"] if n else [], records["boxes"].tolist() if n else [],
            records["iou_preds"].tolist() if n else [], shape, self.min_mask_region_area,
        )

    def _tiled_labels_iter(self, image, intensity_limits, tile_shape, halo):
        from ..images.normalize import check_image, intensity_range
        from ..prediction.tiling import TileGrid, default_halo

        arr = check_image(image)
        if arr.dtype != np.uint8 and intensity_limits is None:
            intensity_limits = intensity_range(arr)  # one rule for the whole image, not per tile
        rgb = to_uint8_rgb(arr, intensity_limits)
        shape = rgb.shape[:2]
        grid = TileGrid(shape, tile_shape, default_halo(tile_shape) if halo is None else halo)
        masks, boxes, scores = [], [], []
        for k, tile in enumerate(grid):
            records, _ = yield from relay(
                self._records_iter(rgb[tile.outer_slices], None, None),
                each=lambda p, k=k: Progress(k * p.total + p.done, len(grid) * max(p.total, 1),
                                             f"tile {k + 1}/{len(grid)}"),
            )
            r0, c0 = tile.origin
            for local, box, score in zip(records["masks"] if len(records) else [],
                                         records["boxes"].tolist() if len(records) else [],
                                         records["iou_preds"].tolist() if len(records) else []):
                centre = (r0 + (box[1] + box[3]) / 2, c0 + (box[0] + box[2]) / 2)
                if grid.tile_containing(centre).index != tile.index or not local.any():
                    continue
                masks.append(local)
                boxes.append([box[0] + c0, box[1] + r0, box[2] + c0, box[3] + r0])
                scores.append(score)
        return paint_label_image(masks, boxes, scores, shape, self.min_mask_region_area)

    # ---- pipeline ------------------------------------------------------------------------------
    def _records_iter(self, image, intensity_limits, embedding):
        rgb = to_uint8_rgb(image, intensity_limits)
        orig_size = rgb.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        n_batches = [
            -(-len(self.point_grids[layer]) // self.points_per_batch) for layer in layer_idxs
        ]
        total, done = sum(n_batches), 0
        yield Progress(0, total, "automatic segmentation")

        data = MaskRecords()
        for i_crop, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs)):
            x0, y0, x1, y1 = crop_box
            if embedding is not None and crop_box == [0, 0, orig_size[1], orig_size[0]]:
                if tuple(embedding.original_size) != tuple(orig_size):
                    raise InvalidImageError(
                        f"The embedding was computed for an image of size {tuple(embedding.original_size)}, "
                        f"not {tuple(orig_size)}."
                    )
                self.predictor.set_embedding(embedding)
            else:
                self.predictor.set_image(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
            crop_size = (y1 - y0, x1 - x0)
            points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
            crop_data = MaskRecords()
            for start in range(0, len(points), self.points_per_batch):
                crop_data.cat(self._process_batch(points[start : start + self.points_per_batch], crop_size,
                                                  crop_box, orig_size))
                done += 1
                yield Progress(done, total, f"crop {i_crop + 1}/{len(crop_boxes)}")
            self.predictor.reset_image()
            if len(crop_data):
                crop_data.filter(_batched_nms(crop_data["boxes"], crop_data["iou_preds"], self.box_nms_thresh))
                offset = torch.tensor([x0, y0, x0, y0])
                crop_data["boxes"] = crop_data["boxes"] + offset
                crop_data["points"] = crop_data["points"] + torch.tensor([x0, y0])
                crop_data["crop_boxes"] = torch.tensor([crop_box] * len(crop_data))
            data.cat(crop_data)

        if len(crop_boxes) > 1 and len(data):
            cb = data["crop_boxes"]
            scores = 1 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))
            data.filter(_batched_nms(data["boxes"], scores, self.crop_nms_thresh))
        if self.min_mask_region_area > 0 and len(data):
            self._remove_small_regions(data, orig_size)
        return data, orig_size

    def _decode(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Multimask decoding of single positive points (B, 2) in the model frame.

        Returns the flat predicted IoUs (B*3,) float32, the flat indices (n,) of the
        masks that pass ``pred_iou_thresh`` (mask j of point i has index 3*i + j), and
        their low-res logits (n, 4h, 4w) float32.
        """
        model = self.predictor.model
        features = self.predictor.decoder_features()
        dtype = self.predictor.decoder_dtype  # passed only when reduced: a replaced decoder may not take it
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=coords.device)
        sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        image_pe = model.prompt_encoder.get_dense_pe(dtype)
        thresh = self.pred_iou_thresh

        def passing(iou: torch.Tensor) -> torch.Tensor:
            return iou > thresh if thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)

        iou, prompt_idx, low = model.mask_decoder.decode_shared_image(
            features, image_pe, sparse, dense,
            select=lambda iou: passing(iou).any(dim=1).nonzero()[:, 0],
            compute_dtype=dtype,
        )
        keep = passing(iou)[prompt_idx].nonzero()  # (n, 2): row in prompt_idx, mask index
        flat = prompt_idx[keep[:, 0]] * iou.shape[1] + keep[:, 1]
        return iou.flatten().float(), flat, low[keep[:, 0], keep[:, 1]].float()

    @torch.inference_mode()
    def _process_batch(self, points: np.ndarray, crop_size, crop_box, orig_size) -> MaskRecords:
        """Decode (n, 2) crop-frame (x, y) points and filter their masks; boxes stay in the crop frame."""
        model = self.predictor.model
        emb = self.predictor.get_embedding()
        device = self.predictor.device
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, crop_size), device=device)
        iou, keep, low_res = self._decode(coords)
        n_masks = len(iou) // len(points)
        pts = torch.as_tensor(points.repeat(n_masks, axis=0))

        stab_parts, mask_parts, idx_parts = [], [], []
        thr = model.mask_threshold
        off = self.stability_score_offset
        for s in range(0, len(keep), _UPSCALE_CHUNK):
            idx = keep[s : s + _UPSCALE_CHUNK]
            low = low_res[s : s + _UPSCALE_CHUNK]
            logits = model.postprocess_masks(low[:, None], emb.input_size, crop_size)[:, 0]
            inter = (logits > thr + off).sum(dim=(-1, -2), dtype=torch.int32)
            union = (logits > thr - off).sum(dim=(-1, -2), dtype=torch.int32)
            stab = inter / union
            if self.stability_score_thresh > 0.0:
                ok = stab >= self.stability_score_thresh
                idx, stab, logits = idx[ok], stab[ok], logits[ok]
            idx_parts.append(idx)
            stab_parts.append(stab)
            mask_parts.append(logits > thr)
        if not idx_parts or sum(len(i) for i in idx_parts) == 0:
            return MaskRecords()
        idx = torch.cat(idx_parts)
        masks = torch.cat(mask_parts)
        data = MaskRecords(
            boxes=batched_mask_to_box(masks),
            iou_preds=iou[idx].cpu(),
            points=pts[idx.cpu()],
            stability_score=torch.cat(stab_parts).cpu(),
        )
        data["boxes"] = data["boxes"].cpu()
        near = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_size[1], orig_size[0]])
        if near.any():
            keep_edge = ~near
            masks = masks[keep_edge.to(masks.device)]
            data.filter(keep_edge)
        data["masks"] = masks_to_local(masks, data["boxes"])
        return data

    def _remove_small_regions(self, data: MaskRecords, orig_size) -> None:
        """Fill small holes, drop small islands, then suppress new duplicates (in place)."""
        new_masks, new_boxes, unchanged = [], [], []
        for local, box in zip(data["masks"], data["boxes"].tolist()):
            m, b, changed = clean_local_mask(local, box, orig_size, self.min_mask_region_area)
            new_masks.append(m)
            new_boxes.append(b)
            unchanged.append(float(not changed))
        boxes = torch.tensor(new_boxes, dtype=torch.int64)
        keep = _batched_nms(boxes, torch.tensor(unchanged), max(self.box_nms_thresh, self.crop_nms_thresh))
        data["masks"] = new_masks
        data["boxes"] = boxes
        data.filter(keep)

    # ---- output --------------------------------------------------------------------------------
    def _to_annotations(self, data: MaskRecords, shape: tuple[int, int]) -> list[dict[str, Any]]:
        anns = []
        if len(data) == 0:
            return anns
        boxes = data["boxes"].tolist()
        crop_boxes = data["crop_boxes"].tolist()
        ious = data["iou_preds"].tolist()
        stabs = data["stability_score"].tolist()
        points = data["points"].tolist()
        for i, local in enumerate(data["masks"]):
            full = local_to_full(local, boxes[i], shape)
            if self.output_mode == "binary_mask":
                seg: Any = full
            else:
                seg = mask_to_rle(full)
                if self.output_mode == "coco_rle":
                    seg = _coco_encode(seg)
            anns.append(
                {
                    "segmentation": seg,
                    "area": int(local.sum()),
                    "bbox": box_xyxy_to_xywh(boxes[i]),
                    "predicted_iou": ious[i],
                    "point_coords": [points[i]],
                    "stability_score": stabs[i],
                    "crop_box": box_xyxy_to_xywh(crop_boxes[i]),
                }
            )
        return anns


def _coco_encode(rle: dict[str, Any]) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    out["counts"] = out["counts"].decode("utf-8")
    return out
