"""SAM's mask decoder: two-way transformer, upscaling and hypernetwork heads."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        compute_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, K, C).
            dense_prompt_embeddings: (B, C, h, w).
            compute_dtype: dtype of the image tokens in the transformer, of every product with
                them and of the upscaling (e.g. ``torch.bfloat16``); ``None``: the inputs' dtype.
                The prompt tokens and both outputs keep the prompts' dtype.
        Returns:
            low-res mask logits (B, M, 4h, 4w) and IoU predictions (B, M),
            M = 3 with ``multimask_output`` else 1.
        """
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, sl, compute_dtype
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        which: slice = slice(None),
        compute_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (B, M, 4h, 4w) and IoU predictions (B, M) of the mask tokens ``which`` (default: all)."""
        tokens, src = self.attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, compute_dtype
        )
        h, w = image_embeddings.shape[-2:]
        masks = self.masks_from(src, tokens, (h, w), which, compute_dtype)
        return masks, self.iou_prediction_head(tokens[:, 0, :])[:, which]

    def attend(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        compute_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: output tokens (B, 1 + M + K, C) and image tokens (B or 1, h*w, C).

        Token 0 is the IoU token, tokens 1..M the mask tokens. ``compute_dtype``: see :meth:`forward`.
        """
        _check_compute_dtype(compute_dtype)
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(B, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        # Broadcasting instead of repeating the (1, C, h, w) embedding and positional
        # encoding B times. Without mask prompts the dense embedding is one vector
        # expanded over the batch (stride 0), so the image side enters the
        # transformer once, batch 1, and is shared inside its first layer.
        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]
        if dense.dtype != image_embeddings.dtype:  # a reduced-precision image side stays in its dtype
            if dense.stride(-1) == 0 and dense.stride(-2) == 0:
                dense = dense[..., :1, :1]  # one vector per prompt set: cast it, not its expansion
            dense = dense.to(image_embeddings.dtype)
        return self.transformer(image_embeddings + dense, image_pe, tokens, compute_dtype)

    def decode_shared_image(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        select: Callable[[torch.Tensor], torch.Tensor],
        compute_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Multimask decoding of B prompts on one image, upscaling only the selected prompts' masks.

        Computes what :meth:`forward` computes (up to float rounding): the IoU head needs no
        upscaling, so the upscaled logits are made only for the prompts ``select`` picks (e.g.
        those with a mask whose predicted IoU passes a threshold). A decoder whose ``forward``
        or transformer was replaced on the instance runs its ``forward`` and selects after.

        Args:
            image_embedding: (1, C, h, w).  image_pe: (1, C, h, w).
            sparse: (B, K, C) prompt tokens.  dense: (1, C, h, w) or a (B, C, h, w) expansion of
                it: the dense embedding shared by all prompts (no mask inputs).
            select: maps the multimask IoU predictions (B, 3) to the indices (n,) of the
                prompts whose mask logits are wanted.
            compute_dtype: dtype of the image-side products (``None``: fp32); see :meth:`forward`.
        Returns:
            iou_predictions (B, 3), the selected prompt indices (n,), and their
            low-res mask logits (n, 3, 4h, 4w).
        """
        if "forward" in vars(self) or "forward" in vars(self.transformer):
            low, iou = self(image_embedding, image_pe, sparse, dense.expand(sparse.shape[0], -1, -1, -1),
                            multimask_output=True, **({} if compute_dtype is None else {"compute_dtype": compute_dtype}))
            idx = select(iou)
            return iou, idx, low[idx]
        _, _, h, w = image_embedding.shape
        tokens, keys = self.attend(image_embedding, image_pe, sparse, dense[:1], compute_dtype)
        iou = self.iou_prediction_head(tokens[:, 0, :])[:, 1:]
        idx = select(iou)
        if len(idx) == 0:
            return iou, idx, torch.zeros(0, 3, 4 * h, 4 * w, dtype=keys.dtype, device=keys.device)
        everything = len(idx) == sparse.shape[0] and bool((idx == torch.arange(len(idx), device=idx.device)).all())
        if keys.shape[0] > 1 and not everything:
            keys = keys[idx]
        masks = self.masks_from(keys, tokens if everything else tokens[idx], (h, w), slice(1, None), compute_dtype)
        return iou, idx, masks

    def masks_from(
        self,
        src: torch.Tensor,
        tokens: torch.Tensor,
        hw: tuple[int, int],
        which: slice = slice(None),
        compute_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Mask logits (n, M, 4h, 4w) from image tokens ``src`` (n or 1, h*w, C) and output ``tokens`` (n, ., C).

        ``which`` selects the mask tokens (default: all ``num_mask_tokens``).
        ``compute_dtype`` (``None``: ``src``'s dtype) is the dtype the upscaling runs in;
        the logits are returned in the dtype of ``tokens`` (fp32 where ``src`` is reduced).
        The upscaling (ConvT 2x2/2, LayerNorm2d, GELU, ConvT 2x2/2, GELU) is done as
        per-pixel matrix products on channels-last features: a 2x2 stride-2
        transposed convolution maps each input pixel to its own 2x2 output block,
        so the pixel shuffle is postponed to the final (n, M) logits, which are
        far smaller than the (n, C/8, 4h, 4w) features.
        """
        _check_compute_dtype(compute_dtype)
        n = tokens.shape[0]
        mlps = list(self.output_hypernetworks_mlps)[which]
        first = range(self.num_mask_tokens)[which]
        hyper_in = torch.stack([mlp(tokens[:, 1 + i, :]) for i, mlp in zip(first, mlps)], 1)  # (n, M, C/8)
        h, w = hw
        dtype = compute_dtype or src.dtype
        grad = torch.is_grad_enabled() and (src.requires_grad or hyper_in.requires_grad)
        # autograd concatenates the blocks; otherwise each block's logits go straight into their
        # rows of the output, in the tokens' dtype
        out = None if grad else src.new_empty((n, hyper_in.shape[1], 4 * h, 4 * w), dtype=hyper_in.dtype)
        # Work in blocks of (prompts, embedding rows) whose upscaled features (the largest
        # intermediate, 16 x C/8 values per embedding pixel and prompt) stay in the CPU's cache.
        c8 = self.output_upscaling[3].out_channels
        per_row = w * 16 * c8 * dtype.itemsize
        rows = max(1, min(h, _UPSCALE_CHUNK_BYTES // per_row))
        step = max(1, _UPSCALE_CHUNK_BYTES // (rows * per_row))
        per_pixel = tuple(t.to(dtype) for t in self._per_pixel_upscaling())  # the same for every block
        hyper_in = hyper_in.to(dtype)
        shared = src.to(dtype) if src.shape[0] == 1 else None  # cast once, not per block
        parts = []
        for i in range(0, n, step):
            s_i = shared if shared is not None else src[i : i + step].to(dtype)
            row_parts = []
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                block = self._upscale_and_project(
                    s_i[:, r0 * w : r1 * w], hyper_in[i : i + step], (r1 - r0, w), per_pixel,
                    None if out is None else out[i : i + step, :, 4 * r0 : 4 * r1],
                )
                if grad:
                    row_parts.append(block)
            if grad:
                parts.append(torch.cat(row_parts, dim=2))
        return torch.cat(parts) if grad else out

    def _per_pixel_upscaling(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two 2x2 stride-2 transposed convolutions as per-pixel matrices and biases.

        Returns w1 (C, 4 * C/4) with columns [sub-row, sub-col, out], b1 (4 * C/4,),
        w2 (C/4, 4 * C/8), b2 (4 * C/8,), and the LayerNorm2d's weight and bias (C/4,).
        """
        up1, ln, _, up2, _ = self.output_upscaling
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, 4 * up1.out_channels)
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, 4 * up2.out_channels)
        return w1, up1.bias.repeat(4), w2, up2.bias.repeat(4), ln.weight, ln.bias

    def _upscale_and_project(
        self,
        src: torch.Tensor,
        hyper_in: torch.Tensor,
        hw: tuple[int, int],
        per_pixel: tuple[torch.Tensor, ...],
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (n, M, 4h, 4w) of image tokens ``src`` (1 or n, h*w, C) for ``hyper_in`` (n, M, C/8).

        ``per_pixel``: :meth:`_per_pixel_upscaling`, prepared once for all blocks.
        ``out``: an (n, M, 4h, 4w) view to write the logits into (returned); ``None`` returns a new tensor.
        """
        n, M = hyper_in.shape[:2]
        h, w = hw
        _, ln, act1, _, act2 = self.output_upscaling
        w1, b1, w2, b2, ln_w, ln_b = per_pixel
        b, c = src.shape[0], src.shape[-1]
        c4, c8 = w1.shape[1] // 4, w2.shape[1] // 4
        x = torch.addmm(b1, src.reshape(b * h * w, c), w1)  # (b*h*w, 4 * c4)
        x = act1(F.layer_norm(x.view(b * h * w * 4, c4), (c4,), ln_w, ln_b, ln.eps))
        x = act2(torch.addmm(b2, x, w2))  # (b*h*w*4, 4 * c8): rows (i, j, a, b), columns (c, e, channel)
        pixels = x.view(b, h * w * 16, c8)  # rows (i, j, a, b, c, e)
        if b == 1:  # one product for every prompt and mask of a shared image side: (pixels, C/8) @ (C/8, n*M)
            m = torch.mm(pixels[0], hyper_in.reshape(n * M, c8).T)[None]
        else:
            m = torch.bmm(pixels, hyper_in.transpose(1, 2))  # (n, pixels, M)
        # (b, i, j, a, b, c, e, n*M / M) -> (n, M, i a c, j b e): row 4i + 2a + c, column 4j + 2b + e.
        # The pixel shuffle is done by the one copy into the output (on CPU the product with the
        # pixels as rows, then this strided copy, beat the wide (M, pixels) product and a reshape).
        shuffled = m.view(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(n, M, h, 2, 2, w, 2, 2)
        if out is None:
            return shuffled.reshape(n, M, 4 * h, 4 * w)
        out.view(n, M, h, 2, 2, w, 2, 2).copy_(shuffled)
        return out


def _check_compute_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"compute_dtype must be a floating torch dtype (e.g. torch.bfloat16) or None, got {dtype!r}.")


# Bytes of upscaled features per block of (prompts, embedding rows) in MaskDecoder.masks_from.
_UPSCALE_CHUNK_BYTES = 2 * 1024 * 1024


def upscale_masks(
    low_res: torch.Tensor,
    img_size: int,
    input_size: tuple[int, ...],
    original_size: tuple[int, ...],
    threshold: float | None = None,
    chunk_pixels: int = 1 << 24,
    separable: bool | None = None,
) -> torch.Tensor:
    """Upscale low-res logits to the original image, like the reference's ``postprocess_masks``.

    The reference resizes bilinearly to the padded ``img_size`` square, crops to
    ``input_size`` and resizes to ``original_size``. Each step is linear and
    separable, so the whole chain is ``A_rows @ logits @ A_cols^T`` with two fixed
    resampling matrices of at most 3 non-zeros per row. ``separable=True`` (the
    default on CPU) applies them as sparse matrices, per mask: no
    (img_size x img_size) intermediate, and 2-4x faster than the two
    interpolations there; values equal the reference's up to float rounding
    (within 2e-6). ``separable=False`` (the default on GPUs) runs the reference's two
    interpolations, bit-identical, a few masks at a time (``chunk_pixels``).
    Only the low-res rows and columns that the crop keeps are used either way.

    Args:
        low_res: (B, M, 4h, 4w) float logits.
        input_size: (h', w') of the resized image inside the padded input.
        original_size: (H, W) of the original image.
        threshold: if given, return ``logits > threshold`` (bool) instead of logits.
        chunk_pixels: about how many full-size pixels to process at once (``separable=False``).
    Returns:
        (B, M, H, W) float logits, or bool masks with ``threshold``.
    """
    B, M = low_res.shape[:2]
    H, W = int(original_size[0]), int(original_size[1])
    out = torch.empty((B, M, H, W), dtype=torch.bool if threshold is not None else low_res.dtype, device=low_res.device)
    lh, lw = low_res.shape[-2:]
    # Only the low-res rows/columns that the crop to ``input_size`` reads are upscaled: with an
    # integer factor f, upscaling the first r rows to r * f rows gives the same sampling
    # positions and weights as the full upscale for every output row below (r - 1) * f.
    rows, cols = lh, lw
    if img_size % lh == 0 and img_size % lw == 0:
        f_h, f_w = img_size // lh, img_size // lw
        rows = min(lh, -(-int(input_size[0]) // f_h) + 1)
        cols = min(lw, -(-int(input_size[1]) // f_w) + 1)
    up_h, up_w = rows * img_size // lh, cols * img_size // lw
    flat_out = out.view(B * M, H, W)
    if separable if separable is not None else low_res.device.type == "cpu":
        a_rows = _resampling_matrix(rows, up_h, int(input_size[0]), H, low_res.device)
        a_cols = _resampling_matrix(cols, up_w, int(input_size[1]), W, low_res.device)
        flat_in = low_res.reshape(B * M, lh, lw)[:, :rows, :cols]
        if threshold is not None and float(threshold) == 0.0:
            for i in range(B * M):
                _upscale_region(flat_in[i], a_rows, a_cols, flat_out[i])
            return out
        for i in range(B * M):
            # columns first, on the small side: (W, cols) @ (cols, rows) -> (W, rows), transposed
            # to (rows, W); then rows: (H, rows) @ (rows, W) -> (H, W), written row by row (a
            # transposed full-size result would be written with a large, cache-aliasing stride)
            x = torch.sparse.mm(a_cols, flat_in[i].float().T.contiguous()).T.contiguous()  # (rows, W)
            x = torch.sparse.mm(a_rows, x)  # (H, W)
            if threshold is not None:
                torch.gt(x, threshold, out=flat_out[i])
            else:
                flat_out[i] = x
        return out
    flat_in = low_res.reshape(B * M, 1, lh, lw)
    step = max(1, chunk_pixels // (up_h * up_w + H * W))
    for i in range(0, B * M, step):
        x = F.interpolate(flat_in[i : i + step, :, :rows, :cols], (up_h, up_w), mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        x = F.interpolate(x, (H, W), mode="bilinear", align_corners=False)
        if threshold is not None:
            torch.gt(x, threshold, out=flat_out[i : i + step, None])
        else:
            flat_out[i : i + step, None] = x
    return out


def _upscale_region(low: torch.Tensor, a_rows: torch.Tensor, a_cols: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` (H, W) bool = ``a_rows @ low @ a_cols^T > 0``, computed only where it can be True.

    Every output pixel is a combination of low-res logits with non-negative weights, so a
    pixel whose low-res neighbours are all <= 0 is <= 0 exactly (products of a weight >= 0
    and a logit <= 0 are <= 0 in floating point, and so are their sums). Only the output
    rows and columns that read the bounding box of the positive low-res logits are computed;
    the rest of ``out`` is False. Inside that box the products are those of the full upscale.
    """
    out.zero_()
    pos = low > 0
    r = torch.nonzero(pos.any(dim=1)).flatten()
    if not len(r):
        return
    c = torch.nonzero(pos.any(dim=0)).flatten()
    j0, j1 = _output_span(a_rows, int(r[0]), int(r[-1]))
    k0, k1 = _output_span(a_cols, int(c[0]), int(c[-1]))
    x = torch.sparse.mm(_csr_rows(a_cols, k0, k1), low.float().T.contiguous()).T.contiguous()  # (rows, k1 - k0)
    x = torch.sparse.mm(_csr_rows(a_rows, j0, j1), x)  # (j1 - j0, k1 - k0)
    torch.gt(x, 0.0, out=out[j0:j1, k0:k1])


def _output_span(a: torch.Tensor, first: int, last: int) -> tuple[int, int]:
    """The output rows [j0, j1) of resampling matrix ``a`` (size, n) that read inputs ``first..last``."""
    lo, hi = _input_reach(a)
    return int(lo[first]), int(hi[last]) + 1


@functools.lru_cache(maxsize=64)
def _input_reach(a: torch.Tensor) -> tuple[list[int], list[int]]:
    """For each input index of CSR matrix ``a`` (size, n): the first and last output row with a weight for it."""
    rows = torch.repeat_interleave(torch.arange(a.shape[0]), a.crow_indices().diff().cpu())
    cols = a.col_indices().cpu()
    nonzero = a.values().cpu() != 0
    rows, cols = rows[nonzero], cols[nonzero]
    n = a.shape[1]
    lo = torch.full((n,), a.shape[0], dtype=torch.long).scatter_reduce(0, cols, rows, "amin")
    hi = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, cols, rows, "amax")
    # inputs no output reads (none for upsampling) get an empty span at their neighbours'
    return torch.cummin(lo.flip(0), 0).values.flip(0).tolist(), torch.cummax(hi, 0).values.tolist()


def _csr_rows(a: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """Rows [j0, j1) of CSR matrix ``a``, sharing its column indices and values."""
    crow = a.crow_indices()
    s, e = int(crow[j0]), int(crow[j1])
    return torch.sparse_csr_tensor(
        crow[j0 : j1 + 1] - s, a.col_indices()[s:e], a.values()[s:e], size=(j1 - j0, a.shape[1]),
        check_invariants=False,
    )


@functools.lru_cache(maxsize=64)
def _resampling_matrix(n: int, up: int, crop: int, size: int, device: torch.device) -> torch.Tensor:
    """(size, n) sparse CSR matrix of: bilinear resize n -> up, keep the first crop, resize -> size.

    Built by resampling the identity with ``F.interpolate`` itself, so the weights
    are the ones the reference's interpolations use.
    """
    import warnings

    eye = torch.eye(n, dtype=torch.float32)[None]  # (1, n basis vectors, n positions)
    x = F.interpolate(eye, size=up, mode="linear", align_corners=False)[..., :crop]
    x = F.interpolate(x, size=size, mode="linear", align_corners=False)[0].T  # (size, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return x.contiguous().to_sparse_csr().to(device)
