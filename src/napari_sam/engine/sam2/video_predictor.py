"""``SAM2VideoPredictor``: Meta's SAM 2 video API on napari-sam's model, over lazily read frames.

Same methods, arguments and results as ``sam2.sam2_video_predictor.SAM2VideoPredictor``
(``init_state``, ``add_new_points_or_box``, ``add_new_mask``, ``propagate_in_video``,
``reset_state``, ``clear_all_prompts_in_frame``), and the same masks. Differences:

- ``init_state`` takes any sequence napari-sam reads (a (T, H, W[, C]) numpy, zarr or
  dask array, a TIFF or zarr path) as well as a folder of JPEG frames; frames are read
  one at a time when needed and their features are held in a cache bounded in bytes, so
  memory does not grow with the frames (Meta's loads the whole video). What grows, by default,
  is the per-frame tracking output (about 1.8 MB per frame and object at 1024 px);
  with ``bounded_memory=True`` only what the memory bank can still attend to is kept
  (see :meth:`SAM2VideoPredictor._trim`), so memory stays flat in the number of frames.
- The inference state is a typed :class:`InferenceState`, not a dict.
- Per-frame image features are kept in napari-sam's embedding store (memory LRU bounded in
  bytes; :mod:`.frame_features`): a second propagation by the same predictor (a re-run after
  a correction) reuses the frames still there instead of encoding them again, same masks.
- Bad input raises napari-sam's typed errors.
- Hole filling (``fill_hole_area``) is off by default: Meta's needs its CUDA extension
  and skips it on CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidPromptError, TrackingError
from ...model.sam2 import NO_OBJ_SCORE, SAM2Model
from ...model.sam2.sam2 import ImageFeatures
from ...model.sam2.tracking import FrameOutput, MemoryBank, encode_memory, track_step
from .frame_features import FrameFeatures
from .frames import FrameSource
from .image_predictor import remove_small_regions


@dataclass
class InferenceState:
    """Everything a tracking session holds: the frames, the prompts, each object's memory bank."""

    frames: FrameSource
    device: torch.device
    obj_id_to_idx: OrderedDict = field(default_factory=OrderedDict)
    point_inputs_per_obj: dict[int, dict[int, dict]] = field(default_factory=dict)
    mask_inputs_per_obj: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    output_per_obj: dict[int, MemoryBank] = field(default_factory=dict)
    temp_output_per_obj: dict[int, MemoryBank] = field(default_factory=dict)
    frames_tracked_per_obj: dict[int, dict[int, bool]] = field(default_factory=dict)  # frame -> reverse
    cached_features: tuple[int, ImageFeatures] | None = None

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

    @property
    def video_height(self) -> int:
        return self.frames.height

    @property
    def video_width(self) -> int:
        return self.frames.width

    @property
    def obj_ids(self) -> list:
        return list(self.obj_id_to_idx)


class SAM2VideoPredictor:
    """Track objects through a sequence with SAM 2.1's memory.

    Args:
        model: a :class:`~napari_sam.model.sam2.SAM2Model`.
        fill_hole_area: fill holes up to this many low-resolution pixels in each mask (0: off).
        non_overlap_masks: at each pixel keep only the highest-scoring object in the outputs.
        bounded_memory: during propagation keep, per object, only the outputs the memory
            bank can still attend to: the prompted frames', the memories (mask features) of
            the ``num_maskmem`` frames nearest a prompted frame or last tracked, and the
            object pointers of the ``max_obj_ptrs_in_encoder`` frames nearest them. Off: every
            output is kept, as in Meta's predictor. Propagation from prompted frames gives
            the same masks either way; a prompt added later on an already-tracked frame far
            from the prompted and recent frames then sees fewer earlier memories than Meta's
            would (the ones dropped).
        feature_store: the :class:`~napari_sam.engine.store.embedding_store.EmbeddingStore` that keeps
            per-frame features for reuse (memory only: SAM 2.1 features are not written to disk); by
            default a new one bounded to :data:`~.frame_features.FEATURE_CACHE_BYTES`.
    """

    def __init__(self, model: SAM2Model, fill_hole_area: int = 0, non_overlap_masks: bool = False,
                 bounded_memory: bool = False, feature_store: Any = None) -> None:
        if not isinstance(model, SAM2Model):
            from ...errors import CheckpointError

            raise CheckpointError(
                f"SAM 2 tracking needs a SAM 2.1 model (e.g. sam2.1_hiera_tiny or a sam2.1_hiera_*.pt file); "
                f"got a {type(model).__name__}, a SAM 1 model. Choose a SAM 2.1 model."
            )
        self.model = model
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.bounded_memory = bounded_memory
        self.frame_features = FrameFeatures(model, feature_store)

    @property
    def feature_store(self):
        """The :class:`~napari_sam.engine.store.embedding_store.EmbeddingStore` of per-frame features."""
        return self.frame_features.store

    @property
    def encoded_frames(self) -> int:
        """Image-encoder passes so far (frames not found in the feature store)."""
        return self.frame_features.encoded

    @property
    def image_size(self) -> int:
        return self.model.image_size

    # -- session ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def init_state(self, video_path: Any, offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False,
                   async_loading_frames: bool = False, intensity_limits: tuple[float, float] | None = None) -> InferenceState:
        """Open a sequence (see module docstring) and embed its first frame.

        The ``offload_*`` and ``async_loading_frames`` flags of Meta's API are accepted
        and have no effect: frames are always read lazily, one at a time.
        """
        frames = video_path if isinstance(video_path, FrameSource) else FrameSource(video_path, intensity_limits)
        self.frame_features.bind()  # re-fingerprints the weights (fine-tuned since the last run: nothing stale reused)
        state = InferenceState(frames, self.model.device)
        self._features(state, 0)
        return state

    @torch.inference_mode()
    def reset_state(self, inference_state: InferenceState) -> None:
        """Forget every object, prompt and result (the frames stay open)."""
        s = inference_state
        for d in (s.obj_id_to_idx, s.point_inputs_per_obj, s.mask_inputs_per_obj, s.output_per_obj,
                  s.temp_output_per_obj, s.frames_tracked_per_obj):
            d.clear()

    def _obj_idx(self, state: InferenceState, obj_id) -> int:
        idx = state.obj_id_to_idx.get(obj_id)
        if idx is None:
            idx = len(state.obj_id_to_idx)
            state.obj_id_to_idx[obj_id] = idx
            state.point_inputs_per_obj[idx] = {}
            state.mask_inputs_per_obj[idx] = {}
            state.output_per_obj[idx] = MemoryBank()
            state.temp_output_per_obj[idx] = MemoryBank()
            state.frames_tracked_per_obj[idx] = {}
        return idx

    def _check_frame(self, state: InferenceState, frame_idx) -> int:
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)) \
                or not 0 <= frame_idx < state.num_frames:
            raise InvalidPromptError(
                f"Frame index {frame_idx!r} is outside the sequence: it has {state.num_frames} frames "
                f"(0 to {state.num_frames - 1})."
            )
        return int(frame_idx)

    def _features(self, state: InferenceState, frame_idx: int) -> ImageFeatures:
        if state.cached_features is None or state.cached_features[0] != frame_idx:
            state.cached_features = (frame_idx, self.frame_features.get(state.frames, frame_idx, state.device))
        return state.cached_features[1]

    # -- prompts ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def add_new_points_or_box(self, inference_state: InferenceState, frame_idx: int, obj_id, points=None, labels=None,
                              clear_old_points: bool = True, normalize_coords: bool = True, box=None):
        """Add clicks (x, y pixels; labels 1/0) and/or a box (x0, y0, x1, y1) for ``obj_id`` on a frame.

        Returns ``(frame_idx, obj_ids, masks)``: masks (n_objects, 1, H, W) logits of that frame.
        """
        state = inference_state
        frame_idx = self._check_frame(state, frame_idx)
        if (points is None) != (labels is None):
            raise InvalidPromptError("points and labels must be provided together.")
        if points is None and box is None:
            raise InvalidPromptError("Give points (with labels) or a box.")
        pts = torch.zeros(0, 2) if points is None else torch.as_tensor(np.asarray(points, np.float32))
        lab = torch.zeros(0, dtype=torch.int32) if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int32)
        if pts.dim() == 2:
            pts = pts[None]
        if lab.dim() == 1:
            lab = lab[None]
        if pts.dim() != 3 or pts.shape[0] != 1 or pts.shape[-1] != 2 or tuple(lab.shape) != tuple(pts.shape[:2]):
            raise InvalidPromptError(
                f"points must be (N, 2) as (x, y) with labels (N,); got {tuple(pts.shape)} and {tuple(lab.shape)}."
            )
        if not torch.isfinite(pts).all() or not torch.isin(lab, torch.tensor([0, 1], dtype=torch.int32)).all():
            raise InvalidPromptError("points must be finite and labels 1 (foreground) or 0 (background).")
        if box is not None:
            if not clear_old_points:
                raise InvalidPromptError("A box must come first: add it with clear_old_points=True, then add clicks.")
            b = torch.as_tensor(np.asarray(box, np.float32))
            if b.numel() != 4 or not torch.isfinite(b).all():
                raise InvalidPromptError(f"box must be 4 finite numbers x0, y0, x1, y1; got {tuple(b.shape)}.")
            pts = torch.cat([b.reshape(1, 2, 2), pts], 1)
            lab = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), lab], 1)
        if normalize_coords:
            pts = pts / torch.tensor([state.video_width, state.video_height])
        pts = (pts * self.image_size).to(state.device)
        lab = lab.to(state.device)
        obj_idx = self._obj_idx(state, obj_id)
        old = None if clear_old_points else state.point_inputs_per_obj[obj_idx].get(frame_idx)
        if old is not None:
            pts = torch.cat([old["point_coords"], pts], 1)
            lab = torch.cat([old["point_labels"], lab], 1)
        point_inputs = {"point_coords": pts, "point_labels": lab}
        state.point_inputs_per_obj[obj_idx][frame_idx] = point_inputs
        state.mask_inputs_per_obj[obj_idx].pop(frame_idx, None)
        return self._add_prompt(state, frame_idx, obj_idx, point_inputs, None)

    @torch.inference_mode()
    def add_new_mask(self, inference_state: InferenceState, frame_idx: int, obj_id, mask):
        """Give ``obj_id``'s mask ((H, W) bool) on a frame. Returns ``(frame_idx, obj_ids, masks)``."""
        state = inference_state
        frame_idx = self._check_frame(state, frame_idx)
        m = torch.as_tensor(np.asarray(mask)).bool()
        if m.dim() != 2:
            raise InvalidPromptError(f"mask must be a 2-D (H, W) array; got shape {tuple(m.shape)}.")
        m = m[None, None].float().to(state.device)
        s = self.image_size
        if tuple(m.shape[-2:]) != (s, s):
            m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        obj_idx = self._obj_idx(state, obj_id)
        state.mask_inputs_per_obj[obj_idx][frame_idx] = m
        state.point_inputs_per_obj[obj_idx].pop(frame_idx, None)
        return self._add_prompt(state, frame_idx, obj_idx, None, m)

    def _add_prompt(self, state: InferenceState, frame_idx: int, obj_idx: int, point_inputs, mask_inputs):
        tracked = state.frames_tracked_per_obj[obj_idx]
        is_init = frame_idx not in tracked
        reverse = False if is_init else tracked[frame_idx]
        bank, temp = state.output_per_obj[obj_idx], state.temp_output_per_obj[obj_idx]
        store = temp.cond if is_init else temp.non_cond
        prev_logits = None
        if point_inputs is not None:
            prev = store.get(frame_idx) or bank.cond.get(frame_idx) or bank.non_cond.get(frame_idx)
            if prev is not None and prev.pred_masks is not None:
                prev_logits = torch.clamp(prev.pred_masks.to(state.device), -32.0, 32.0)
        out = self._run_frame(state, bank, frame_idx, is_init, point_inputs, mask_inputs, reverse,
                              run_mem_encoder=False, prev_sam_mask_logits=prev_logits)
        store[frame_idx] = out
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, is_cond=is_init)

    def _run_frame(self, state, bank, frame_idx, is_init, point_inputs, mask_inputs, reverse, run_mem_encoder,
                   prev_sam_mask_logits=None) -> FrameOutput:
        feats = self._features(state, frame_idx)
        out, _ = track_step(self.model, frame_idx, is_init, feats, point_inputs, mask_inputs, bank,
                            state.num_frames, reverse, run_mem_encoder, prev_sam_mask_logits)
        if self.fill_hole_area > 0:
            out.pred_masks = remove_small_regions(out.pred_masks, 0.0, self.fill_hole_area, 0)
        return out

    def _frame_masks(self, state: InferenceState, frame_idx: int, is_cond: bool) -> torch.Tensor:
        """All objects' current masks on a frame at video resolution, (n_objects, 1, H, W) logits."""
        h, w = state.video_height, state.video_width
        masks = torch.full((len(state.obj_id_to_idx), 1, h, w), NO_OBJ_SCORE, device=state.device)
        for obj_idx in range(len(state.obj_id_to_idx)):
            temp, bank = state.temp_output_per_obj[obj_idx], state.output_per_obj[obj_idx]
            out = (temp.cond if is_cond else temp.non_cond).get(frame_idx) or bank.cond.get(frame_idx) \
                or bank.non_cond.get(frame_idx)
            if out is not None and out.pred_masks is not None:
                masks[obj_idx : obj_idx + 1] = F.interpolate(out.pred_masks, size=(h, w), mode="bilinear",
                                                             align_corners=False)
        return self._video_res(state, masks)

    def _video_res(self, state: InferenceState, masks: torch.Tensor) -> torch.Tensor:
        h, w = state.video_height, state.video_width
        if tuple(masks.shape[-2:]) != (h, w):
            masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
        if self.non_overlap_masks and masks.shape[0] > 1:
            keep = torch.argmax(masks, dim=0, keepdim=True) == torch.arange(masks.shape[0], device=masks.device)[:, None, None, None]
            masks = torch.where(keep, masks, torch.clamp(masks, max=-10.0))
        return masks

    @torch.inference_mode()
    def clear_all_prompts_in_frame(self, inference_state: InferenceState, frame_idx: int, obj_id, need_output: bool = True):
        """Remove ``obj_id``'s prompts on a frame; its result there becomes an ordinary tracked frame."""
        state = inference_state
        frame_idx = self._check_frame(state, frame_idx)
        if obj_id not in state.obj_id_to_idx:
            raise InvalidPromptError(f"Unknown object id {obj_id!r}; known: {state.obj_ids}.")
        obj_idx = state.obj_id_to_idx[obj_id]
        state.point_inputs_per_obj[obj_idx].pop(frame_idx, None)
        state.mask_inputs_per_obj[obj_idx].pop(frame_idx, None)
        temp, bank = state.temp_output_per_obj[obj_idx], state.output_per_obj[obj_idx]
        temp.cond.pop(frame_idx, None)
        temp.non_cond.pop(frame_idx, None)
        out = bank.cond.pop(frame_idx, None)
        if out is not None:
            bank.non_cond[frame_idx] = out
            state.frames_tracked_per_obj[obj_idx].pop(frame_idx, None)
        if need_output:
            is_cond = any(frame_idx in t.cond for t in state.temp_output_per_obj.values())
            return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, is_cond)

    # -- propagation ------------------------------------------------------------------------------
    def _preflight(self, state: InferenceState) -> None:
        """Encode the memories of newly prompted frames and commit them to the memory banks."""
        if not state.obj_id_to_idx:
            raise TrackingError("No object has a prompt yet: add points, a box or a mask on some frame first.")
        s = self.image_size
        for obj_idx, obj_id in enumerate(state.obj_id_to_idx):
            temp, bank = state.temp_output_per_obj[obj_idx], state.output_per_obj[obj_idx]
            for src, dst in ((temp.non_cond, bank.non_cond), (temp.cond, bank.cond)):
                for frame_idx, out in src.items():
                    if out.maskmem_features is None:
                        high = F.interpolate(out.pred_masks.to(state.device), size=(s, s), mode="bilinear",
                                             align_corners=False)
                        encode_memory(self.model, out, self._features(state, frame_idx), high, is_mask_from_pts=True)
                    dst[frame_idx] = out
                src.clear()
            if not bank.cond:
                raise TrackingError(f"Object {obj_id!r} has no prompt on any frame; add one or remove the object.")
            for frame_idx in bank.cond:
                bank.non_cond.pop(frame_idx, None)

    @torch.inference_mode()
    def propagate_in_video(self, inference_state: InferenceState, start_frame_idx: int | None = None,
                           max_frame_num_to_track: int | None = None, reverse: bool = False
                           ) -> Iterator[tuple[int, list, torch.Tensor]]:
        """Track every object frame by frame; yields ``(frame_idx, obj_ids, masks (n_objects, 1, H, W) logits)``.

        Starts at ``start_frame_idx`` (default: the first prompted frame) and goes
        forward, or backward with ``reverse``, over at most ``max_frame_num_to_track``
        further frames.
        """
        state = inference_state
        self._preflight(state)
        n = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(t for bank in state.output_per_obj.values() for t in bank.cond)
        start_frame_idx = self._check_frame(state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = n
        if max_frame_num_to_track < 0:
            raise InvalidPromptError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}.")
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end = min(start_frame_idx + max_frame_num_to_track, n - 1)
            order = range(start_frame_idx, end + 1)
        for frame_idx in order:
            per_obj = []
            for obj_idx in range(len(state.obj_id_to_idx)):
                bank = state.output_per_obj[obj_idx]
                if frame_idx in bank.cond:
                    masks = bank.cond[frame_idx].pred_masks.to(state.device)
                else:
                    out = self._run_frame(state, bank, frame_idx, False, None, None, reverse, run_mem_encoder=True)
                    bank.non_cond[frame_idx] = out
                    masks = out.pred_masks
                state.frames_tracked_per_obj[obj_idx][frame_idx] = reverse
                per_obj.append(masks)
                if self.bounded_memory:
                    self._trim(bank, frame_idx)
            yield frame_idx, state.obj_ids, self._video_res(state, torch.cat(per_obj, 0))

    def _trim(self, bank: MemoryBank, frame_idx: int) -> None:
        """Drop from ``bank`` what no later step of a run from a prompted frame attends to.

        A tracked frame attends to every conditioning frame, the memories of the
        ``num_maskmem - 1`` frames before it and the object pointers of the
        ``max_obj_ptrs_in_encoder - 1`` frames before it (in tracking order). A run goes on
        from the frame just tracked or starts on a prompted frame, so keeping full outputs
        within ``num_maskmem`` frames of a prompted frame or of ``frame_idx`` (the frame
        just tracked), and pointers within ``max_obj_ptrs_in_encoder``, keeps every input.
        """
        n_mem, n_ptr = self.model.num_maskmem, self.model.cfg.max_obj_ptrs_in_encoder
        keep_mem = set(range(frame_idx - n_mem, frame_idx + n_mem + 1))
        keep_ptr = set(range(frame_idx - n_ptr, frame_idx + n_ptr + 1))
        for c in bank.cond:
            keep_mem.update(range(c - n_mem, c + n_mem + 1))
            keep_ptr.update(range(c - n_ptr, c + n_ptr + 1))
        for t in list(bank.non_cond):
            if t in keep_mem:
                continue
            out = bank.non_cond[t]
            if t in keep_ptr:
                if out.maskmem_features is not None:
                    bank.non_cond[t] = FrameOutput(None, out.obj_ptr, out.object_score_logits)
            else:
                del bank.non_cond[t]

    @staticmethod
    def memory_bytes(inference_state: InferenceState) -> int:
        """Bytes of the tensors the tracking state holds (outputs, memories, prompts, cached features)."""
        seen: set[int] = set()

        def size(x) -> int:
            if isinstance(x, torch.Tensor):
                if id(x) in seen:
                    return 0
                seen.add(id(x))
                return x.numel() * x.element_size()
            if isinstance(x, dict):
                return sum(size(v) for v in x.values())
            if isinstance(x, (list, tuple)):
                return sum(size(v) for v in x)
            if isinstance(x, MemoryBank):
                return size(x.cond) + size(x.non_cond)
            if hasattr(x, "__dataclass_fields__"):
                return sum(size(getattr(x, f)) for f in x.__dataclass_fields__)
            return 0

        s = inference_state
        return size([s.point_inputs_per_obj, s.mask_inputs_per_obj, s.output_per_obj, s.temp_output_per_obj,
                     s.cached_features])
