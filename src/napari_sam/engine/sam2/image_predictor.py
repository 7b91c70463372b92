"""``SAM2ImagePredictor``: Meta's SAM 2 image API (``set_image`` / ``predict``) on napari-sam's model.

Same signatures and return values as ``sam2.sam2_image_predictor.SAM2ImagePredictor``;
coordinates are (x, y) pixels of the image. Beyond the reference: any image napari-sam
reads is accepted (gray, uint16, float: converted to 8-bit RGB by napari-sam's rule;
uint8 RGB is used as is), prompts are checked with clear errors, and the small-hole
and sprinkle clean-up works on CPU (scipy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ImageNotSetError, InvalidImageError, InvalidPromptError
from ...model.sam2 import SAM2Model
from ...model.sam2.transforms import coords_to_input, resize_to_square
from ..images.normalize import to_uint8_rgb


def _as_rgb(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        try:  # a PIL image, as the reference accepts
            from PIL.Image import Image
        except ImportError:  # pragma: no cover
            Image = ()
        if isinstance(image, Image):
            image = np.asarray(image.convert("RGB"))
        else:
            raise InvalidImageError(f"Expected a numpy array or a PIL image, got {type(image).__name__}.")
    return to_uint8_rgb(image)


def remove_small_regions(logits: torch.Tensor, threshold: float, max_hole_area: float, max_sprinkle_area: float) -> torch.Tensor:
    """Fill holes and drop sprinkles (8-connected regions up to the given areas) in (B, M, H, W) logits."""
    from scipy import ndimage

    out = logits.clone()
    structure = np.ones((3, 3), bool)
    flat = out.view(-1, *out.shape[-2:])
    for i in range(flat.shape[0]):
        for area, region_of, fill in (
            (max_hole_area, lambda m: m <= threshold, threshold + 10.0),
            (max_sprinkle_area, lambda m: m > threshold, threshold - 10.0),
        ):
            if area <= 0:
                continue
            region = region_of(flat[i]).cpu().numpy()
            labels, n = ndimage.label(region, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel())
            small = (sizes <= area) & (np.arange(n + 1) > 0)
            flat[i][torch.from_numpy(small[labels]).to(flat.device)] = fill
    return out


class SAM2ImagePredictor:
    """Embed an image once, then predict masks for any number of prompts.

    Args:
        sam_model: a :class:`~napari_sam.model.sam2.SAM2Model`.
        mask_threshold: logit above which a pixel is in the mask.
        max_hole_area / max_sprinkle_area: fill holes / remove specks up to this
            area (pixels of the low-resolution masks) before upscaling; 0 = off.
    """

    def __init__(self, sam_model: SAM2Model, mask_threshold: float = 0.0, max_hole_area: float = 0.0,
                 max_sprinkle_area: float = 0.0, **kwargs) -> None:
        if not isinstance(sam_model, SAM2Model):
            raise TypeError(
                f"SAM2ImagePredictor needs a SAM 2.1 model, got {type(sam_model).__name__}; "
                f"use napari_sam.SamPredictor for SAM 1 models."
            )
        self.model = sam_model
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.reset_predictor()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_predictor(self) -> None:
        self._is_image_set = False
        self._features = None
        self._orig_hw: list[tuple[int, int]] | None = None
        self._is_batch = False

    @torch.inference_mode()
    def _embed(self, images: list[np.ndarray]) -> dict:
        size = self.model.image_size
        batch = torch.cat([resize_to_square(torch.from_numpy(np.ascontiguousarray(im)), size) for im in images])
        feats = self.model.forward_image(self.model.pixel_normalize(batch.to(self.device)))
        embed = feats.embed + self.model.no_mem_embed.view(1, -1, 1, 1)  # SAM 2.1 adds "no memory" on single images
        return {"image_embed": embed, "high_res_feats": feats.high_res}

    def set_image(self, image) -> None:
        """Compute the embedding of ``image``: (H, W, 3) RGB uint8 as the reference, or any 2-D image napari-sam reads."""
        self.reset_predictor()
        rgb = _as_rgb(image)
        self._features = self._embed([rgb])
        self._orig_hw = [tuple(rgb.shape[:2])]
        self._is_image_set = True

    def set_image_batch(self, image_list: list) -> None:
        """Embed several images for :meth:`predict_batch`."""
        self.reset_predictor()
        if not isinstance(image_list, (list, tuple)) or not image_list:
            raise InvalidImageError("set_image_batch expects a non-empty list of images.")
        rgbs = [_as_rgb(im) for im in image_list]
        self._features = self._embed(rgbs)
        self._orig_hw = [tuple(r.shape[:2]) for r in rgbs]
        self._is_image_set = True
        self._is_batch = True

    def get_features(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[int, int]]:
        """The current image's (image_embed (1, C, S/16, S/16), high-resolution features
        ((1, C/8, S/4, S/4), (1, C/4, S/8, S/8)), (H, W)): what :meth:`set_features` takes back."""
        self._check_set()
        if self._is_batch:
            raise ImageNotSetError("get_features is for one image set with .set_image(...), not a batch.")
        return self._features["image_embed"], tuple(self._features["high_res_feats"]), self._orig_hw[0]

    def set_features(self, image_embed: torch.Tensor, high_res_feats, orig_hw: tuple[int, int]) -> None:
        """Use features from :meth:`get_features` (e.g. cached) instead of running the encoder."""
        self.reset_predictor()
        self._features = {"image_embed": image_embed.to(self.device),
                          "high_res_feats": [f.to(self.device) for f in high_res_feats]}
        self._orig_hw = [tuple(int(s) for s in orig_hw)]
        self._is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """(1, C, S/16, S/16) embedding of the current image."""
        self._check_set()
        return self._features["image_embed"]

    def _check_set(self) -> None:
        if not self._is_image_set:
            raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the current image.

        Args:
            point_coords: (N, 2) (x, y) pixels, or (B, N, 2) for B objects at once.
            point_labels: (N,) or (B, N): 1 foreground, 0 background.
            box: (4,) x0, y0, x1, y1 pixels, or (B, 4).
            mask_input: (1, S/4, S/4) low-resolution logits from a previous call, or (B, 1, S/4, S/4).
            multimask_output: three candidate masks instead of one.
            return_logits: logits instead of boolean masks.
            normalize_coords: coordinates are image pixels (else already in [0, 1]).
        Returns:
            masks (C, H, W) (or (B, C, H, W)), scores (C,), low-resolution logits (C, S/4, S/4).
        """
        self._check_set()
        masks, ious, low = self._predict_one(point_coords, point_labels, box, mask_input, multimask_output,
                                             return_logits, normalize_coords, 0)
        return masks.squeeze(0).float().cpu().numpy(), ious.squeeze(0).float().cpu().numpy(), low.squeeze(0).float().cpu().numpy()

    def predict_batch(self, point_coords_batch=None, point_labels_batch=None, box_batch=None, mask_input_batch=None,
                      multimask_output: bool = True, return_logits: bool = False, normalize_coords: bool = True):
        """:meth:`predict` for each image of :meth:`set_image_batch`; lists of the per-image results."""
        self._check_set()
        if not self._is_batch:
            raise ImageNotSetError("predict_batch needs images set with .set_image_batch(...).")
        out = ([], [], [])
        for i in range(len(self._orig_hw)):
            pick = lambda seq: None if seq is None else seq[i]  # noqa: E731
            res = self._predict_one(pick(point_coords_batch), pick(point_labels_batch), pick(box_batch),
                                    pick(mask_input_batch), multimask_output, return_logits, normalize_coords, i)
            for lst, r in zip(out, res):
                lst.append(r.squeeze(0).float().cpu().numpy())
        return out

    def _prompts(self, point_coords, point_labels, box, mask_input, normalize_coords, img_idx):
        dev, size, hw = self.device, self.model.image_size, self._orig_hw[img_idx]
        points = None
        if (point_coords is None) != (point_labels is None):
            raise InvalidPromptError("point_labels must be supplied if point_coords is supplied (and the reverse).")
        if point_coords is not None:
            coords = torch.as_tensor(np.asarray(point_coords, np.float32), device=dev)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int32, device=dev)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            if coords.ndim != 3 or coords.shape[-1] != 2 or tuple(labels.shape) != tuple(coords.shape[:2]):
                raise InvalidPromptError(
                    f"point_coords must be (N, 2) or (B, N, 2) as (x, y) with labels (N,) or (B, N); got "
                    f"{tuple(np.shape(point_coords))} and {tuple(np.shape(point_labels))}."
                )
            if not torch.isfinite(coords).all():
                raise InvalidPromptError("point_coords contain NaN or infinite values.")
            if not torch.isin(labels, torch.tensor([0, 1], device=dev)).all():
                raise InvalidPromptError("point_labels must be 1 (foreground) or 0 (background).")
            points = (coords_to_input(coords, hw, size, normalize_coords), labels)
        if box is not None:
            b = torch.as_tensor(np.asarray(box, np.float32), device=dev)
            if b.shape[-1] != 4 or b.ndim > 2 or not torch.isfinite(b).all():
                raise InvalidPromptError(f"box must be (4,) or (B, 4) finite x0, y0, x1, y1; got {tuple(b.shape)}.")
            corners = coords_to_input(b.reshape(-1, 2, 2), hw, size, normalize_coords)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=dev).repeat(corners.shape[0], 1)
            if points is not None:
                if points[0].shape[0] != corners.shape[0]:
                    raise InvalidPromptError(
                        f"{corners.shape[0]} boxes but {points[0].shape[0]} point sets: give one of each per object."
                    )
                points = (torch.cat([corners, points[0]], 1), torch.cat([corner_labels, points[1]], 1))
            else:
                points = (corners, corner_labels)
        mask = None
        if mask_input is not None:
            mask = torch.as_tensor(np.asarray(mask_input, np.float32), device=dev)
            if mask.ndim == 3:
                mask = mask[None]
            side = 4 * self.model.cfg.embedding_size
            if mask.ndim != 4 or tuple(mask.shape[1:]) != (1, side, side):
                raise InvalidPromptError(
                    f"mask_input must be (1, {side}, {side}) low-resolution logits (as predict returns them); "
                    f"got {tuple(np.shape(mask_input))}."
                )
        return points, mask

    @torch.inference_mode()
    def _predict_one(self, point_coords, point_labels, box, mask_input, multimask_output, return_logits,
                     normalize_coords, img_idx):
        points, mask = self._prompts(point_coords, point_labels, box, mask_input, normalize_coords, img_idx)
        model = self.model
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask)
        feats = self._features
        low, ious, _, _ = model.sam_mask_decoder(
            feats["image_embed"][img_idx : img_idx + 1],
            model.sam_prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output,
            [f[img_idx : img_idx + 1] for f in feats["high_res_feats"]],
        )
        logits = low.float()
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            logits = remove_small_regions(logits, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area)
        masks = F.interpolate(logits, self._orig_hw[img_idx], mode="bilinear", align_corners=False)
        low = torch.clamp(low, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, ious, low
