"""Automatic mask generation: napari-sam vs Meta's reference, same weights, same image, same settings.

Both generators get the same perturbed random vit_b weights and the same
1024 x 1024 synthetic image. Two timings:

- mask generation only: one image embedding is computed once and handed to
  both generators (the reference's ``set_image`` is replaced by a function
  that installs that embedding), so only prompting, decoding, filtering, NMS
  and encoding of the masks are timed;
- end to end: each generator embeds the image itself.

Random weights give odd masks, so the IoU and stability thresholds are lowered
(see the options) for a meaningful number of masks to survive; the mask
agreement (count, and the IoU of each reference mask with its best match) is
printed with the timings. One run each, interleaved; numbers vary with load.

Usage: python benchmarks/bench_amg.py [--points-per-side 16] [--threads 2] [--no-e2e]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _image(size: int) -> np.ndarray:
    from skimage.draw import disk
    from skimage.filters import gaussian

    rng = np.random.default_rng(0)
    img = np.zeros((size, size, 3), np.float64)
    for _ in range(40):
        rr, cc = disk(tuple(rng.integers(0, size, 2)), rng.integers(15, 80), shape=(size, size))
        img[rr, cc] = rng.random(3)
    img = gaussian(img, 2, channel_axis=-1) + 0.05 * rng.standard_normal(img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _agreement(ref_anns, our_anns) -> tuple[int, int, float]:
    """(n_ref, n_ours, min over reference masks of the best IoU with one of ours)."""
    if not ref_anns or not our_anns:
        return len(ref_anns), len(our_anns), float(len(ref_anns) == len(our_anns))
    r = np.stack([a["segmentation"] for a in ref_anns]).reshape(len(ref_anns), -1).astype(np.float32)
    o = np.stack([a["segmentation"] for a in our_anns]).reshape(len(our_anns), -1).astype(np.float32)
    inter = r @ o.T
    union = r.sum(1)[:, None] + o.sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    return len(ref_anns), len(our_anns), float(iou.max(1).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.01,
                    help="random weights predict IoUs around -0.4..0.08: 0.01 keeps about a quarter, 0 keeps all")
    ap.add_argument("--stability-thresh", type=float, default=0.5)
    ap.add_argument("--stability-offset", type=float, default=0.02,
                    help="random weights give logits within about +-0.5, so the default offset 1.0 makes every "
                         "stability score 0")
    ap.add_argument("--box-nms-thresh", type=float, default=0.7)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import segment_anything as sa

    from napari_sam.engine.automatic.amg import SamAutomaticMaskGenerator
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    ref = sa.sam_model_registry["vit_b"]()
    g = torch.Generator().manual_seed(3)
    sd = {k: (v + 0.02 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
          for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    ref.eval()
    ours = build_sam("vit_b")
    ours.load_state_dict(sd, strict=True)
    ours.eval()

    image = _image(args.size)
    settings = dict(
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh,
        stability_score_offset=args.stability_offset, box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
    )
    print(f"image {image.shape}, vit_b perturbed random weights, threads={args.threads}, settings={settings}")

    ref_gen = sa.SamAutomaticMaskGenerator(ref, **settings)
    our_gen = SamAutomaticMaskGenerator(ours, **settings)

    t0 = time.perf_counter()
    our_gen.predictor.set_image(image)
    emb = our_gen.predictor.get_embedding()
    t_enc = time.perf_counter() - t0
    print(f"encoder (ours, once): {t_enc:.1f} s")

    def fixed_set_image(img, image_format="RGB"):
        rp = ref_gen.predictor
        rp.reset_image()
        rp.features = emb.features
        rp.original_size = img.shape[:2]
        rp.input_size = emb.input_size
        rp.is_image_set = True

    if args.crop_n_layers == 0:
        real_set_image = ref_gen.predictor.set_image
        ref_gen.predictor.set_image = fixed_set_image
        t0 = time.perf_counter()
        ref_anns = ref_gen.generate(image)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        our_anns = our_gen.generate(image, embedding=emb)
        t_ours = time.perf_counter() - t0
        n_r, n_o, worst = _agreement(ref_anns, our_anns)
        print(f"mask generation only (shared embedding): reference {t_ref:.1f} s, ours {t_ours:.1f} s, "
              f"speed-up {t_ref / t_ours:.2f}x; masks ref {n_r} / ours {n_o}, worst matched IoU {worst:.4f}")
        ref_gen.predictor.set_image = real_set_image

    if not args.no_e2e:
        t0 = time.perf_counter()
        ref_anns = ref_gen.generate(image)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        our_anns = our_gen.generate(image)
        t_ours = time.perf_counter() - t0
        n_r, n_o, worst = _agreement(ref_anns, our_anns)
        print(f"end to end: reference {t_ref:.1f} s, ours {t_ours:.1f} s, speed-up {t_ref / t_ours:.2f}x; "
              f"masks ref {n_r} / ours {n_o}, worst matched IoU {worst:.4f}")


if __name__ == "__main__":
    main()
