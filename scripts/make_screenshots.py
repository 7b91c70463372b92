"""Screenshots for docs/first-click.md, docs/scripting.md, docs/timelapse.md and docs/3d.md, from a real napari viewer.

Run under a virtual display::

    xvfb-run -a .venv/bin/python scripts/make_screenshots.py [--model tiny|vit_b|PATH] [--out docs/images]
        [--sam2 NAME|PATH] [--only widget timelapse stack-sam2]

The model is the zoo default (the bundled 'tiny') unless ``--model`` names another;
without any trained weights it falls back to a random-weight 'tiny' and says so
in the status line (the masks are then meaningless, the interface is not).
Work runs inline (NAPARI_SAM_SYNC=1) so every picture is deterministic.
The time-lapse and z-stack memory pictures use ``--sam2`` (a SAM 2.1 zoo name or file); without one
they use random SAM 2.1 hiera_tiny weights at a 256 px input and say so in the image layer's name (the
interface is real, the tracked masks are not meaningful). Each group of pictures has its own viewer.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def _load(model_arg: str | None):
    from napari_sam.engine.models import zoo
    from napari_sam.errors import NapariSamError

    try:
        name = model_arg or zoo.default_model_name()
        return zoo.load_model(name, device="cpu"), str(name)
    except NapariSamError:
        if model_arg:
            raise
    import torch

    from napari_sam.model import build_sam

    torch.manual_seed(0)
    model = build_sam("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model, "tiny (RANDOM weights: masks not meaningful)"


def _shot(viewer, out: Path, name: str) -> None:
    from qtpy.QtWidgets import QApplication

    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):  # e.g. a PyQt5 deprecation note
        toast.close()
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(out / name), canvas_only=False, flash=False)
    print("wrote", out / name)


def _click_target(truth: np.ndarray, label: int) -> tuple[float, float]:
    rows, cols = np.nonzero(truth == label)
    return float(np.median(rows)), float(np.median(cols))


PICTURES = ("widget", "timelapse", "stack-sam2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--sam2", default=None, help="SAM 2.1 model for the time-lapse and z-stack memory pictures")
    ap.add_argument("--only", nargs="+", choices=PICTURES, default=list(PICTURES),
                    help="which pictures: the main widget's (first-click, ...), timelapse, stack-sam2")
    args = ap.parse_args()
    os.environ["NAPARI_SAM_SYNC"] = "1"
    import warnings

    for msg in ("System theme detection", "napari support for the PyQt5"):  # toasts over the canvas otherwise
        warnings.filterwarnings("ignore", message=msg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # every model before the first viewer: no heavy import after the GL context exists
    model, model_name = _load(args.model) if "widget" in args.only else (None, "")
    sam2, sam2_name = _load_sam2(args.sam2) if set(MEMORY_PICTURES) & set(args.only) else (None, "")

    if "widget" in args.only:
        _widget_pictures(out, model, model_name)
    for name, picture in MEMORY_PICTURES.items():
        if name in args.only:
            _memory_picture(out, sam2, sam2_name, **picture)


def _viewer():
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    return viewer


def _widget_pictures(out: Path, model, model_name: str) -> None:
    """The main widget: opened, a first click, a negative click and a box, accepted labels, a stack slice."""
    from napari_sam.samples import synthetic_cells, synthetic_stack

    viewer = _viewer()
    img, truth = synthetic_cells((256, 256), n_cells=12, seed=0)
    viewer.add_image(img, name="nuclei", colormap="gray")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    widget.set_model(model, name=model_name)
    ctl = widget.controller
    _shot(viewer, out, "widget-opened.png")

    ctl.add_point(_click_target(truth, 3))
    _shot(viewer, out, "first-click.png")

    ctl.add_point(_click_target(truth, 5), positive=False)
    r, c = _click_target(truth, 3)
    ctl.add_box((r - 25, c - 25, r + 25, c + 25))
    _shot(viewer, out, "negative-click-and-box.png")

    ctl.accept()
    for lab in (1, 2, 5, 7):
        ctl.add_point(_click_target(truth, lab))
        ctl.accept()
    viewer.layers.selection.active = ctl.target_layer
    _shot(viewer, out, "accepted-labels.png")

    stack, struth = synthetic_stack((16, 192, 192), n_cells=6, seed=0)
    layer = viewer.add_image(stack, name="stack", colormap="gray")
    for name in ("nuclei", "SAM labels"):
        viewer.layers[name].visible = False
    widget._image.value = layer
    viewer.reset_view()
    z = 8
    viewer.dims.set_current_step(0, z)
    ctl.add_point(_click_target(struth[z], int(np.bincount(struth[z].ravel())[1:].argmax()) + 1))
    _shot(viewer, out, "stack-slice.png")
    ctl.clear()
    viewer.close()


def _propagation_widget(viewer, sam2, image_layer, labels_layer):
    """The "Propagate in 3D" dock widget on these layers, with the SAM 2.1 model chosen."""
    _, prop = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Propagate in 3D")
    prop.session.model = sam2
    if "sam2.1_hiera_tiny" in prop._model.choices:
        prop._model.value = "sam2.1_hiera_tiny"
    prop._image.value, prop._labels.value = image_layer, labels_layer
    return prop


#: the SAM 2.1 memory pictures: objects drawn on one frame (or slice) of a synthetic movie (or
#: stack), propagated through it with SAM 2.1 memory, shown on the drawn frame (with random weights
#: the masks on the other frames are not meaningful; the status line says what ran)
MEMORY_PICTURES = {
    "timelapse": dict(shape=(8, 160, 160), n_cells=5, seed=3, image="movie", objects="cells",
                      frame=None, tracks=True, file="timelapse-tracks.png"),  # frame None: the one with most cells
    "stack-sam2": dict(shape=(16, 192, 192), n_cells=6, seed=0, image="stack", objects="nuclei",
                       frame=8, tracks=False, file="stack-sam2.png"),
}


def _memory_picture(out: Path, sam2, sam2_name: str, shape, n_cells: int, seed: int, image: str, objects: str,
                    frame: int | None, tracks: bool, file: str) -> None:
    """One of :data:`MEMORY_PICTURES`: objects drawn on one frame, propagated with SAM 2.1 memory
    (and their tracks added when ``tracks``), shown on the drawn frame."""
    from napari_sam.samples import synthetic_stack

    viewer = _viewer()
    data, truth = synthetic_stack(shape, n_cells=n_cells, seed=seed)
    image_layer = viewer.add_image(data, name=f"{image} ({sam2_name})", colormap="gray")
    if frame is None:  # the frame with most objects: drawn by hand
        frame = int(np.argmax([len(np.unique(f)) for f in truth]))
    seeds = np.zeros_like(truth)
    seeds[frame] = truth[frame]
    labels_layer = viewer.add_labels(seeds, name=objects)
    prop = _propagation_widget(viewer, sam2, image_layer, labels_layer)
    viewer.dims.set_current_step(0, frame)
    viewer.reset_view()
    prop.propagate_all()
    if tracks:
        prop.add_tracks()
    viewer.dims.set_current_step(0, frame)
    _shot(viewer, out, file)
    viewer.close()


def _load_sam2(arg: str | None):
    """(SAM 2.1 model, description): ``arg`` from the zoo or a file, else random hiera_tiny weights."""
    if arg:
        from napari_sam.engine.models import zoo

        return zoo.load_model(arg, device="cpu"), str(arg)
    import torch

    from napari_sam.model.sam2 import build_sam2

    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_tiny", image_size=256)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(2.0)  # else "absent" everywhere
    return model, "random SAM 2.1 weights"


if __name__ == "__main__":
    main()
