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

The reference's bare ``SamPredictor.predict`` (Meta's ``segment_anything``, no napari,
no viewer) for one click on a 1024 x 1024 image is timed in the same run, click for
click interleaved with ours, so both see the same machine load; the output gives
``click_over_reference_predict`` (our whole napari click / their bare predict).
vit_b is compared with Meta's vit_b (same weights, its features set directly);
``tiny`` with the bare predict of MobileSAM, the reference small SAM for clicking:
MobileSAM's predictor, prompt encoder and mask decoder are Meta's code on the same
64 x 64 x 256 embedding, so Meta's predictor stands in for it (``mobile_sam`` itself
needs ``timm``).
The CPU's instruction set (torch's capability and the AVX-512 / bf16 / AMX flags) is printed first.

    xvfb-run -a .venv/bin/python benchmarks/bench_click.py [--models vit_b tiny] [--clicks 20] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mouse_events import mouse_event  # noqa: E402  (the stand-in mouse events the click-ahead tests use)


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


def cpu_instruction_set() -> dict:
    """torch's CPU capability and the vector/matrix flags of /proc/cpuinfo that matter for SAM."""
    import torch

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "flags": [f for f in wanted if f in flags],
        "no": [f for f in wanted if f not in flags],
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def reference_predictor(name: str, ours):
    """Meta's ``SamPredictor`` with its features set directly (no encoder run).

    vit_b: Meta's vit_b with our weights. tiny: the same predictor with random weights: a
    bare ``predict`` costs the same for any weights, and it is exactly what MobileSAM's
    ``predict`` runs (MobileSAM copies Meta's predictor, prompt encoder and mask decoder
    and keeps the 64 x 64 x 256 embedding; only its encoder differs, and predict does
    not run the encoder), the reference small SAM for clicking.
    """
    import segment_anything

    ref = segment_anything.sam_model_registry["vit_b"]()
    if name == "vit_b":
        ref.load_state_dict(ours.state_dict())
    ref.eval()
    rp = segment_anything.SamPredictor(ref)
    g = __import__("torch").Generator().manual_seed(0)
    rp.features = 0.5 * __import__("torch").randn(1, 256, 64, 64, generator=g)
    rp.original_size, rp.input_size, rp.is_image_set = (1024, 1024), (1024, 1024), True
    label = "segment_anything vit_b" if name == "vit_b" else "segment_anything predict (= MobileSAM vit_t predict)"
    return rp, label


def bench(name: str, clicks: int, size: int, precision: str | None = None) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam.samples import synthetic_cells

    import napari_sam.widgets.main_widget as main_widget

    model, label = _model(name)
    ref_pred, ref_label = reference_predictor(name, model)
    # the widget would also load the default model by itself when opened; the benchmark injects its own
    main_widget._default_model = lambda: None
    viewer = napari.Viewer(show=False)
    img, truth = synthetic_cells((size, size), n_cells=40, seed=1)
    viewer.add_image(img, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    ctl = widget.controller
    app = QApplication.instance()
    while ctl.image_layer is None:  # the widget picks the image once it is shown
        app.processEvents()
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
    latencies, from_event, decoder, reference = [], [], [], []
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
        ctl.segmenter.predict(points=[(rows[j], cols[j])], multimask=True, lazy=True).best_mask
        decoder.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref_pred.predict(np.array([[cols[j], rows[j]]], float) * 1024 / size, np.array([1]), multimask_output=True)
        reference.append(time.perf_counter() - t)
    latencies, from_event, decoder, reference = latencies[2:], from_event[2:], decoder[2:], reference[2:]  # warm-up
    mouse = {gap: mouse_clicks(ctl, pts, ref_pred, rows, cols, size, clicks, gap, done) for gap in MOUSE_GAPS_S}
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
        "reference": ref_label,
        "reference_bare_predict_ms_median": ms(statistics.median(reference)),
        "reference_bare_predict_ms_range": [ms(min(reference)), ms(max(reference))],
        "click_to_preview_ms_range": [ms(min(latencies)), ms(max(latencies))],
        "click_over_reference_predict": round(statistics.median(latencies) / statistics.median(reference), 3),
        "click_over_reference_predict_per_click_median": round(
            statistics.median([a / b for a, b in zip(latencies, reference)]), 3),
        "napari_sam_overhead_ms_median": ms(statistics.median(from_event) - statistics.median(decoder)),
        **{f"mouse_click_{round(1000 * gap)}ms_hold": m for gap, m in mouse.items()},
        "clicks": clicks,
    }


# How long the mouse button is held in a click: 0 (press and release back to back: the decode
# only overlaps napari's own handling of the click) and 100 ms, about a person's usual click.
MOUSE_GAPS_S = (0.0, 0.1)


def mouse_clicks(ctl, pts, ref_pred, rows, cols, size, clicks, hold_s, done) -> dict:
    """Clicks as napari receives them: mouse press, the button held ``hold_s``, mouse release.

    napari adds the point on release; napari-sam starts decoding at the press (click-ahead).
    Timed from the release (when the click is complete and napari handles it) to the preview
    event, interleaved with the reference's bare predict of the same click.
    """
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    rng = np.random.default_rng(1)
    release, reference = [], []
    used0 = ctl.click_ahead.used
    for i in range(clicks + 2):
        ctl.clear()
        app.processEvents()
        j = rng.integers(len(rows))
        rc = (float(rows[j]), float(cols[j]))
        ev = lambda kind: mouse_event(kind, rc)  # noqa: E731
        done.clear()
        mouse_press_callbacks(pts, ev("mouse_press"))
        time.sleep(hold_s)
        t = time.perf_counter()
        mouse_release_callbacks(pts, ev("mouse_release"))
        app.processEvents()
        release.append(done.get("t", time.perf_counter()) - t)
        t = time.perf_counter()
        ref_pred.predict(np.array([[cols[j], rows[j]]], float) * 1024 / size, np.array([1]), multimask_output=True)
        reference.append(time.perf_counter() - t)
    release, reference = release[2:], reference[2:]
    return {
        "release_to_preview_ms_median": round(1000 * statistics.median(release), 1),
        "release_to_preview_ms_p90": round(1000 * float(np.percentile(release, 90)), 1),
        "reference_bare_predict_ms_median": round(1000 * statistics.median(reference), 1),
        "over_reference_predict": round(statistics.median(release) / statistics.median(reference), 3),
        "over_reference_predict_per_click_median": round(
            statistics.median([a / b for a, b in zip(release, reference)]), 3),
        "decoded_ahead": ctl.click_ahead.used - used0,
        "clicks": clicks + 2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "vit_b"])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--precision", default=None, help="fp32 / bf16 / fp16 (default: the engine's default)")
    args = ap.parse_args()
    import torch
    import torchvision  # noqa: F401  (the references import it: before any OpenGL context exists)

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    print(json.dumps({"cpu": cpu_instruction_set()}), flush=True)
    for name in args.models:
        print(json.dumps(bench(name, args.clicks, args.size, args.precision)), flush=True)


if __name__ == "__main__":
    main()
