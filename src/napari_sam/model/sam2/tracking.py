"""One tracking step of SAM 2: condition a frame on the memory bank, decode, encode a new memory.

The memory bank of one object is a :class:`MemoryBank`: its conditioning frames (those
with prompts) and the other tracked frames, each a :class:`FrameOutput`. Which memories
a frame attends to follows Meta's ``SAM2Base`` exactly (all conditioning frames, the
``num_maskmem - 1`` previous frames in tracking order, object pointers of up to 16
frames), so results match the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .position import sine_1d
from .sam2 import HeadOutput, ImageFeatures, SAM2Model


@dataclass
class FrameOutput:
    """Tracking result of one object on one frame.

    ``pred_masks`` (B, 1, S/4, S/4) logits; ``obj_ptr`` (B, C); ``object_score_logits`` (B, 1);
    ``maskmem_features`` (B, mem_dim, S/16, S/16), stored in bfloat16 as the reference does,
    and ``maskmem_pos_enc`` of the same shape; both ``None`` until the memory is encoded.
    """

    pred_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor
    maskmem_features: torch.Tensor | None = None
    maskmem_pos_enc: torch.Tensor | None = None


@dataclass
class MemoryBank:
    """Per-object outputs by frame index: prompted (conditioning) frames and tracked ones."""

    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)


def _ptr_positions(model: SAM2Model, bank: MemoryBank, frame_idx: int, num_frames: int, reverse: bool):
    """(temporal offsets, pointers) of the object pointers a frame attends to."""
    sign = -1 if reverse else 1
    pairs = [
        ((frame_idx - t) * sign, out.obj_ptr)
        for t, out in bank.cond.items()
        if (t >= frame_idx if reverse else t <= frame_idx)
    ]
    max_ptrs = min(num_frames, model.cfg.max_obj_ptrs_in_encoder)
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or t >= num_frames:
            break
        out = bank.non_cond.get(t)
        if out is not None:
            pairs.append((t_diff, out.obj_ptr))
    return pairs, max_ptrs


def memory_conditioned_features(
    model: SAM2Model,
    frame_idx: int,
    is_init_cond_frame: bool,
    feats: ImageFeatures,
    bank: MemoryBank,
    num_frames: int,
    reverse: bool = False,
) -> torch.Tensor:
    """The frame's (B, C, h, w) stride-16 features after attending to the memory bank."""
    vis = feats.embed
    b, c, h, w = vis.shape
    if is_init_cond_frame:  # no memory yet: SAM 2.1 adds a learned "no memory" embedding
        return vis + model.no_mem_embed.view(1, c, 1, 1)
    n_mem = model.num_maskmem
    memories, memory_pos = [], []
    chosen = [(0, out) for out in bank.cond.values()]
    for t_pos in range(1, n_mem):
        t_rel = n_mem - t_pos
        prev = frame_idx + t_rel if reverse else frame_idx - t_rel
        chosen.append((t_pos, bank.non_cond.get(prev)))
    for t_pos, out in chosen:
        if out is None or out.maskmem_features is None:  # not tracked, or its memory was let go
            continue
        memories.append(out.maskmem_features.to(vis.device).flatten(2).transpose(1, 2))
        pos = out.maskmem_pos_enc.to(vis.device).flatten(2).transpose(1, 2)
        memory_pos.append(pos + model.maskmem_tpos_enc[n_mem - t_pos - 1].view(1, 1, -1))
    pairs, max_ptrs = _ptr_positions(model, bank, frame_idx, num_frames, reverse)
    n_ptr_tokens = 0
    if pairs:
        offsets, ptrs = zip(*pairs)
        ptrs = torch.stack(ptrs, dim=1)  # (B, N, C)
        t_pos = torch.tensor(offsets, device=vis.device) / (max_ptrs - 1)
        ptr_pos = model.obj_ptr_tpos_proj(sine_1d(t_pos, c))  # (N, mem_dim)
        split = c // model.mem_dim
        ptrs = ptrs.reshape(b, -1, model.mem_dim)  # each pointer as `split` memory-width tokens
        ptr_pos = ptr_pos.repeat_interleave(split, dim=0)[None].expand(b, -1, -1)
        memories.append(ptrs)
        memory_pos.append(ptr_pos)
        n_ptr_tokens = ptrs.shape[1]
    # float32 memory: the stored bfloat16 memories are exact in it (Meta's concatenation with the float32
    # pointers promotes them the same way; without pointers its CPU path fails on the dtype mismatch)
    memory = torch.cat([x.float() for x in memories], dim=1)
    memory_pos = torch.cat(memory_pos, dim=1)
    curr = vis.flatten(2).transpose(1, 2)
    curr_pos = feats.pos.flatten(2).transpose(1, 2)
    out = model.memory_attention(curr, curr_pos, memory, memory_pos, n_ptr_tokens)
    return out.transpose(1, 2).reshape(b, c, h, w)


def use_multimask(model: SAM2Model, is_init_cond_frame: bool, point_inputs: dict | None) -> bool:
    """Three candidate masks for zero or one click (SAM 2.1 also tracks with them)."""
    n = 0 if point_inputs is None else point_inputs["point_labels"].shape[1]
    return 0 <= n <= 1


def track_step(
    model: SAM2Model,
    frame_idx: int,
    is_init_cond_frame: bool,
    feats: ImageFeatures,
    point_inputs: dict | None,
    mask_inputs: torch.Tensor | None,
    bank: MemoryBank,
    num_frames: int,
    reverse: bool = False,
    run_mem_encoder: bool = True,
    prev_sam_mask_logits: torch.Tensor | None = None,
) -> tuple[FrameOutput, HeadOutput]:
    """Segment one object on one frame from its prompts (if any) and its memory bank."""
    if mask_inputs is not None:  # a given mask is the output as is
        heads = model.use_mask_as_output(feats.embed, feats.high_res, mask_inputs)
    else:
        pix = memory_conditioned_features(model, frame_idx, is_init_cond_frame, feats, bank, num_frames, reverse)
        heads = model.forward_sam_heads(
            pix,
            point_inputs=point_inputs,
            mask_inputs=prev_sam_mask_logits,
            high_res_features=feats.high_res,
            multimask_output=use_multimask(model, is_init_cond_frame, point_inputs),
        )
    out = FrameOutput(heads.low_res_masks, heads.obj_ptr, heads.object_score_logits)
    if run_mem_encoder:
        encode_memory(model, out, feats, heads.high_res_masks, is_mask_from_pts=point_inputs is not None)
    return out, heads


def encode_memory(
    model: SAM2Model, out: FrameOutput, feats: ImageFeatures, high_res_masks: torch.Tensor, is_mask_from_pts: bool
) -> None:
    """Fill ``out``'s memory from the frame's raw features and its (B, 1, S, S) mask logits."""
    mem, pos = model.encode_new_memory(feats.embed, high_res_masks, out.object_score_logits, is_mask_from_pts)
    out.maskmem_features = mem.to(torch.bfloat16)
    out.maskmem_pos_enc = pos
