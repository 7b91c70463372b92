"""Click latency of the napari widget: from a Points-data change to the preview Labels layer updated.

Measured with the whole machinery in place: a real napari viewer (run under
``xvfb-run -a``), the dock widget opened through the manifest, the embedding
computed by a napari worker, the controller listening to the Points layer.
Each click is ``points_layer.add(...)``; ``data_event_to_preview`` starts when the
Points layer's data-change event fires and ``click_to_preview`` when ``add`` is
called (adds napari's own point handling); both stop when the controller's
``preview`` event fires (after the decoder ran and the preview layer was
written and refreshed). The decoder alone (``Segmenter.predict``) is timed on the
same embedding for comparison.

Models: vit_b (random, perturbed weights; 1024 px input) and the 'tiny' architecture
(bundled weights if present, else random). Image: 1024 x 1024 uint16.

    xvfb-run -a .venv/bin/python benchmarks/bench_click.py [--models vit_b tiny] [--clicks 20] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def _perturbed(model, seed=0, scale=0.02):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _model(name):
    from napari_sam.engine.models import zoo
    from napari_sam.model import build_sam

    if name == "tiny" and zoo.REGISTRY.get("tiny") is not None and zoo.REGISTRY["tiny"].available:
        return zoo.load_model("tiny", device="cpu"), "tiny (bundled weights)"
    return _perturbed(build_sam(name)), f"{name} (random perturbed weights)"


def bench(name: str, clicks: int, size: int, precision: str | None = None) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam.samples import synthetic_cells

    import napari_sam.widgets.main_widget as main_widget

    model, label = _model(name)
    # the widget would also load the default model by itself when opened; the benchmark injects its own
    main_widget._default_model = lambda: None
    viewer = napari.Viewer(show=False)
    img, truth = synthetic_cells((size, size), n_cells=40, seed=1)
    viewer.add_image(img, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    ctl = widget.controller
    t0 = time.perf_counter()
    widget.set_model(model, name=name, precision=precision)
    app = QApplication.instance()
    while widget.busy or not ctl.segmenter.has_embedding(None):  # the worker embeds
        app.processEvents()
        time.sleep(0.01)
    embed_s = time.perf_counter() - t0

    done = {}
    ctl.events.preview.connect(lambda e: done.setdefault("t", time.perf_counter()))

    def on_data(event):  # runs before the controller: the moment the data-change event fires
        if str(getattr(event, "action", "")).lower() == "added":
            done.setdefault("event", time.perf_counter())

    ctl.points_layer.events.data.connect(on_data, position="first")
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(truth)
    latencies, from_event, decoder = [], [], []
    pts = ctl.points_layer
    for i in range(clicks + 2):
        ctl.clear()
        j = rng.integers(len(rows))
        done.clear()
        t = time.perf_counter()
        pts.add(np.array([[rows[j], cols[j]]], float))
        app.processEvents()
        end = done.get("t", time.perf_counter())
        latencies.append(end - t)
        from_event.append(end - done.get("event", t))
        t = time.perf_counter()
        ctl.segmenter.predict(points=[(rows[j], cols[j])], multimask=True)
        decoder.append(time.perf_counter() - t)
    latencies, from_event, decoder = latencies[2:], from_event[2:], decoder[2:]  # warm-up
    viewer.close()
    ms = lambda v: round(1000 * v, 1)  # noqa: E731
    return {
        "model": label,
        "image": f"{size}x{size} uint16",
        "device": str(ctl.segmenter.predictor.device),
        "precision": ctl.segmenter.predictor.precision,
        "torch_threads": __import__("torch").get_num_threads(),
        "embedding_s_in_worker": round(embed_s, 2),
        "data_event_to_preview_ms_median": ms(statistics.median(from_event)),
        "data_event_to_preview_ms_p90": ms(float(np.percentile(from_event, 90))),
        "click_to_preview_ms_median": ms(statistics.median(latencies)),
        "click_to_preview_ms_p90": ms(float(np.percentile(latencies, 90))),
        "decoder_only_ms_median": ms(statistics.median(decoder)),
        "napari_sam_overhead_ms_median": ms(statistics.median(from_event) - statistics.median(decoder)),
        "clicks": clicks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "vit_b"])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--precision", default=None, help="fp32 / bf16 / fp16 (default: the engine's default)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    for name in args.models:
        print(json.dumps(bench(name, args.clicks, args.size, args.precision)), flush=True)


if __name__ == "__main__":
    main()
