"""Fast kernel for the mask decoder's head: upscaling and hypernetwork product as per-pixel matrix products.

The plain formulation is ``MaskDecoder.masks_from`` in ``mask_decoder.py``: the image tokens
through ``output_upscaling`` (ConvT 2x2/2, LayerNorm2d, GELU, ConvT 2x2/2, GELU), then the
hypernetwork weights times the upscaled features. A 2x2 stride-2 transposed convolution maps each
input pixel to its own 2x2 output block, so here both run as per-pixel matrix products on
channels-last features and the pixel shuffle is postponed to the final (n, M) logits, far smaller
than the (n, C/8, 4h, 4w) features. A batch-1 image side is shared by every prompt, and the work
goes in blocks of (prompts, embedding rows) whose upscaled features stay in the CPU's cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import check_compute_dtype

# Bytes of upscaled features per block of (prompts, embedding rows) in masks_from.
_UPSCALE_CHUNK_BYTES = 2 * 1024 * 1024


def hypernetwork_weights(decoder, tokens: torch.Tensor, which: slice) -> torch.Tensor:
    """(n, M, C/8) weights of the mask tokens ``which`` from the output ``tokens`` (n, ., C)."""
    mlps = list(decoder.output_hypernetworks_mlps)[which]
    first = range(decoder.num_mask_tokens)[which]
    return torch.stack([mlp(tokens[:, 1 + i, :]) for i, mlp in zip(first, mlps)], 1)


def masks_from(decoder, src: torch.Tensor, tokens: torch.Tensor, hw: tuple[int, int], which: slice = slice(None),
               compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``MaskDecoder.masks_from``: logits (n, M, 4h, 4w) from image tokens ``src`` (n or 1, h*w, C)."""
    check_compute_dtype(compute_dtype)
    n = tokens.shape[0]
    hyper_in = hypernetwork_weights(decoder, tokens, which)  # (n, M, C/8)
    h, w = hw
    dtype = compute_dtype or src.dtype
    grad = torch.is_grad_enabled() and (src.requires_grad or hyper_in.requires_grad)
    # autograd concatenates the blocks; otherwise each block's logits go straight into their
    # rows of the output, in the tokens' dtype
    out = None if grad else src.new_empty((n, hyper_in.shape[1], 4 * h, 4 * w), dtype=hyper_in.dtype)
    c8 = decoder.output_upscaling[3].out_channels
    per_row = w * 16 * c8 * dtype.itemsize
    rows = max(1, min(h, _UPSCALE_CHUNK_BYTES // per_row))
    step = max(1, _UPSCALE_CHUNK_BYTES // (rows * per_row))
    per_pixel = tuple(t.to(dtype) for t in per_pixel_upscaling(decoder))  # the same for every block
    hyper_in = hyper_in.to(dtype)
    shared = src.to(dtype) if src.shape[0] == 1 else None  # cast once, not per block
    parts = []
    for i in range(0, n, step):
        s_i = shared if shared is not None else src[i : i + step].to(dtype)
        row_parts = []
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            block = upscale_and_project(
                decoder, s_i[:, r0 * w : r1 * w], hyper_in[i : i + step], (r1 - r0, w), per_pixel,
                None if out is None else out[i : i + step, :, 4 * r0 : 4 * r1],
            )
            if grad:
                row_parts.append(block)
        if grad:
            parts.append(torch.cat(row_parts, dim=2))
    return torch.cat(parts) if grad else out


def per_pixel_upscaling(decoder) -> tuple[torch.Tensor, ...]:
    """The two 2x2 stride-2 transposed convolutions as per-pixel matrices and biases.

    Returns w1 (C, 4 * C/4) with columns [sub-row, sub-col, out], b1 (4 * C/4,),
    w2 (C/4, 4 * C/8), b2 (4 * C/8,), and the LayerNorm2d's weight and bias (C/4,).
    """
    up1, ln, _, up2, _ = decoder.output_upscaling
    w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, 4 * up1.out_channels)
    w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, 4 * up2.out_channels)
    return w1, up1.bias.repeat(4), w2, up2.bias.repeat(4), ln.weight, ln.bias


def upscale_and_project(
    decoder,
    src: torch.Tensor,
    hyper_in: torch.Tensor,
    hw: tuple[int, int],
    per_pixel: tuple[torch.Tensor, ...],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (n, M, 4h, 4w) of image tokens ``src`` (1 or n, h*w, C) for ``hyper_in`` (n, M, C/8).

    ``per_pixel``: :func:`per_pixel_upscaling`, prepared once for all blocks.
    ``out``: an (n, M, 4h, 4w) view to write the logits into (returned); ``None`` returns a new tensor.
    """
    n, M = hyper_in.shape[:2]
    h, w = hw
    _, ln, act1, _, act2 = decoder.output_upscaling
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
