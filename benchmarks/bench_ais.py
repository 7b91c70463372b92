"""Automatic segmentation with an instance decoder: encoder, decoder and post-processing times.

A SAM of ``--model`` architecture with random weights and a random instance decoder of the
published configuration (256-channel embedding, 64 features) segment one synthetic
fluorescence image of ``--size`` x ``--size`` pixels. Timed separately, each the minimum
over ``--repeats`` runs:

- encoder: ``SamPredictor.set_image`` (resize, normalise, image encoder);
- decoder: the decoder's three maps brought to the image frame (fp32; under bf16 autocast
  this torch's CPU convolutions did not finish a 16 x 16 embedding in 5 minutes, so bf16 is
  not offered here);
- post-processing: the seeded watershed (micro-sam's defaults), on maps drawn from the
  image's true objects (random weights give meaningless maps, whose watershed cost is
  not representative) and, for reference, on the random decoder's maps.

Also printed: the decoder's FLOPs at this size (``torch.utils.flop_counter.FlopCounterMode`` on
the meta device: nothing is computed), this CPU's sustained fp32 throughput measured now (a
2048 x 2048 matrix product, and the 3x3 convolution of the decoder's biggest layer, 128 -> 64
channels, on a 256 x 256 crop: same work per pixel as at full size), and the resulting compute
lower bound for the decoder: its FLOPs over the fastest of these rates.

Peak memory of vit_b at 1024 x 1024 is about 4 GB. Numbers vary with load: record the
load average with them (printed).

Usage: python benchmarks/bench_ais.py [--model vit_b] [--size 1024] [--threads 2] [--repeats 1]

``--slices-per-minute`` measures instead what a user of the bundled ``tiny`` gets: slices per
minute of the automatic path as ``napari-sam segment`` runs it (``label_slice_steps``: model
input, decoder or grid, post-processing; the settings resolved as for ``--method ais`` and
``--method amg`` with no other option, i.e. tiny's own thresholds from the zoo), on seeded
synthetic widefield nuclei slices (``NucleiPairs``) of each ``--sizes``, untiled and, for
slices larger than the model input, in tiles of the model input with the default halo. The
bundled weights are used, or ``--checkpoint`` (e.g. a training checkpoint with its decoder);
a checkpoint without a decoder gets a random one of tiny's decoder shape (the decoder's time
does not depend on its weights; its maps and so the watershed's time do, which the output
says). Both methods run on the same weights, interleaved ``--repeats`` times (the minimum of
each is reported), so the ratio holds under a changing load. Target: AIS at least 20x the
slices per minute of AMG.

    python benchmarks/bench_ais.py --model tiny --slices-per-minute --threads 1 \
        --checkpoint build/train_tiny_ais/tiny_train.pt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from object_maps import object_maps  # noqa: E402  (the maps the post-processing tests use)


def _true_maps(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground, centre distance, boundary distance of ``labels`` (what a trained decoder predicts)."""
    from scipy import ndimage as ndi

    return tuple(ndi.gaussian_filter(a, 1.0) for a in object_maps(labels))


def decoder_flops(config, embedding_hw: tuple[int, int]) -> int:
    """FLOPs of one decoder pass on a (1, C, h, w) embedding (counted on the meta device: no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from napari_sam.model.instance_decoder import InstanceDecoder

    with torch.device("meta"):
        decoder = InstanceDecoder(config).eval()
        x = torch.empty(1, config.embed_dim, *embedding_hw)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            decoder(x)
    return int(counter.get_total_flops())


def throughput(repeats: int = 3) -> dict[str, float]:
    """Sustained fp32 GFLOP/s now: a 2048^3 matrix product; the decoder's biggest 3x3 convolution
    (128 -> 64 channels) on a 256 x 256 crop, in the standard and the channels-last layout."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"matmul 2048^3": 2 * n**3 / _best(lambda: a @ b, repeats)[0] / 1e9}
    conv = torch.nn.Conv2d(128, 64, 3, padding=1).eval()
    x = torch.randn(1, 128, 256, 256)
    flops = 2 * 128 * 64 * 9 * 256 * 256
    with torch.inference_mode():
        conv(x)
        out["conv3x3 128->64 (NCHW)"] = flops / _best(lambda: conv(x), repeats)[0] / 1e9
        xl = x.contiguous(memory_format=torch.channels_last)
        conv(xl)
        out["conv3x3 128->64 (channels last)"] = flops / _best(lambda: conv(xl), repeats)[0] / 1e9
    return out


def _best(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b", help="architecture (random weights): vit_b, vit_l, vit_h, vit_t, tiny")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--slices-per-minute", action="store_true", help="tiny's AIS and AMG throughput (see above)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="slice sizes for --slices-per-minute")
    ap.add_argument("--checkpoint", default=None, help="tiny weights for --slices-per-minute (default: bundled)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.slices_per_minute:
        slices_per_minute(args)
        return

    from napari_sam.engine.automatic.instance_decoder import decoder_maps
    from napari_sam.engine.automatic.instance_maps import labels_from_maps
    from napari_sam.engine.prediction.predictor import SamPredictor
    from napari_sam.model import build_sam
    from napari_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig
    from napari_sam.training.synthetic import synthetic_sample

    torch.manual_seed(0)
    model = build_sam(args.model)
    model.instance_decoder = InstanceDecoder(InstanceDecoderConfig(embed_dim=model.prompt_encoder.embed_dim)).eval()
    image, labels = synthetic_sample(0, (args.size, args.size), "nuclei")
    print(f"{args.model}, {args.size} x {args.size}, {args.threads} threads, {int(labels.max())} true objects, "
          f"load average {os.getloadavg()[0]:.1f}")

    predictor = SamPredictor(model, precision="fp32")
    t_enc, _ = _best(lambda: predictor.set_image(image), args.repeats)
    emb = predictor.get_embedding()
    gflop = decoder_flops(model.instance_decoder.config, tuple(emb.features.shape[-2:])) / 1e9
    rates = throughput()
    best_rate = max(rates.values())
    print(f"  decoder: {gflop:.0f} GFLOP per {model.img_size} x {model.img_size} input")
    for name, rate in rates.items():
        print(f"  this CPU now, {name:40s} {rate:8.1f} GFLOP/s")
    print(f"  compute lower bound for the decoder: {gflop:.0f} GFLOP / {best_rate:.1f} GFLOP/s = "
          f"{gflop / best_rate:.2f} s")

    t_dec, maps = _best(lambda: decoder_maps(model, emb), args.repeats)
    rows = [("encoder (set_image)", t_enc), ("decoder fp32 (maps in the image frame)", t_dec)]
    true_maps = _true_maps(labels)
    t_post, seg = _best(lambda: labels_from_maps(*true_maps), args.repeats)
    rows.append((f"post-processing, maps of the true objects ({int(seg.max())} found)", t_post))
    t_post_random, seg_r = _best(lambda: labels_from_maps(*maps), args.repeats)
    rows.append((f"post-processing, random decoder's maps ({int(seg_r.max())} found)", t_post_random))
    for name, t in rows:
        print(f"  {name:64s} {t:8.3f} s")
    print(f"  {'decoder fp32 + post-processing':64s} {t_dec + t_post:8.3f} s")


def slices_per_minute(args) -> None:
    """Slices per minute of tiny's AIS and AMG on synthetic nuclei slices (see the module docstring)."""
    from napari_sam.engine.automatic.settings import AutoSettings
    from napari_sam.engine.automatic.slice_segmenter import label_slice_steps
    from napari_sam.engine.models.zoo import load_model
    from napari_sam.engine.progress import run_blocking
    from napari_sam.model.instance_decoder import InstanceDecoder, tiny_decoder_config
    from napari_sam.training.synthetic_nuclei import NucleiPairs

    if args.model != "tiny":
        raise SystemExit("--slices-per-minute measures the bundled 'tiny' (use --model tiny).")
    source = Path(args.checkpoint) if args.checkpoint else "tiny"
    model = load_model(source, device="cpu", model_type="tiny", progressbar=False)
    decoder_note = "trained decoder"
    if model.instance_decoder is None:
        torch.manual_seed(0)
        model.instance_decoder = InstanceDecoder(tiny_decoder_config(model.prompt_encoder.embed_dim)).eval()
        decoder_note = "random decoder of tiny's shape (decoder time is representative, watershed time is not)"
    print(f"tiny ({args.checkpoint or 'bundled weights'}; {decoder_note}), {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'slice':>11s} {'tiling':>14s} {'AIS s':>8s} {'AMG s':>8s} {'AIS /min':>9s} {'AMG /min':>9s} "
          f"{'ratio':>6s} {'objects AIS/AMG/true':>21s}")
    for size in args.sizes:
        image, truth = NucleiPairs(1, seed=777, shape=(size, size))[0]
        tilings = [None] + ([model.img_size] if size > model.img_size else [])
        for tile in tilings:
            times, found = {"ais": [], "amg": []}, {}
            for method in times:  # warm-up
                run_blocking(label_slice_steps(model, image[:64, :64], AutoSettings(method=method), model_name="tiny"))
            for _ in range(args.repeats):  # interleaved, so a change of load hits both methods alike
                for method in times:
                    settings = AutoSettings(method=method, tile_shape=tile)
                    t = time.perf_counter()
                    labels = run_blocking(label_slice_steps(model, image, settings, model_name="tiny"))
                    times[method].append(time.perf_counter() - t)
                    found[method] = int(labels.max())
            times = {k: min(v) for k, v in times.items()}
            a, g = times["ais"], times["amg"]
            where = "untiled" if tile is None else f"tiles of {tile}"
            print(f"{size:5d}x{size:<5d} {where:>14s} {a:8.2f} {g:8.2f} {60 / a:9.1f} {60 / g:9.2f} {g / a:6.1f} "
                  f"{found['ais']:>7d}/{found['amg']}/{int(truth.max())}")


if __name__ == "__main__":
    main()
