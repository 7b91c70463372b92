"""Run by tests/test_napari_crash_guard.py in a fresh interpreter: viewer FIRST, then every button.

Opens a real viewer (its OpenGL context exists from then on) before anything heavy is imported,
adds every dock widget of napari-sam's manifest, and presses every push button of each on a 2D
and a 3D sample, with the bundled model, then the main widget's with a SAM 2.1 model. Prints one JSON line: what was pressed, each widget's
status after each sample, and which crash-prone modules got imported.

Usage: python crash_guard_script.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HEAVY = ("torchvision", "torch._dynamo", "triton")


def loaded(names=HEAVY) -> list[str]:
    """Which of ``names`` are loaded (a ``None`` entry in sys.modules marks a module blocked, not loaded)."""
    return [m for m in names if sys.modules.get(m) is not None]


heavy_at_start = loaded()

import napari  # noqa: E402
import numpy as np  # noqa: E402
from magicgui.widgets import Container, PushButton  # noqa: E402
from npe2 import PluginManager  # noqa: E402

from napari_sam.samples import synthetic_cells, synthetic_stack  # noqa: E402

out_dir = Path(sys.argv[1])
viewer = napari.Viewer(show=False)  # the GL context exists from here on
viewer.window._qt_window.resize(1200, 900)

manifest = PluginManager.instance().get_manifest("napari-sam-lab")
widgets = {}
for contrib in manifest.contributions.widgets:
    _, w = viewer.window.add_plugin_dock_widget("napari-sam-lab", contrib.display_name)
    widgets[contrib.display_name] = w


def buttons(container) -> list[PushButton]:
    found = []
    for child in container:
        if isinstance(child, PushButton):
            found.append(child)
        elif isinstance(child, Container):
            found.extend(buttons(child))
    return found


pressed: dict[str, list[list]] = {name: [] for name in widgets}  # [button, status after, seconds]
statuses: dict[str, dict[str, str]] = {}
clicks: dict[str, tuple[float, float]] = {}


def press_all(name: str, skip: tuple[str, ...] = ()) -> None:
    """Press every button of the widget, top to bottom (a disabled one through its signal)."""
    for b in buttons(widgets[name]):
        if b.text in skip:
            continue
        t0 = time.perf_counter()
        if b.enabled and b.visible:
            b.native.click()
        else:
            b.clicked.emit()
        pressed[name].append([b.text, status(name), round(time.perf_counter() - t0, 2)])


def status(name: str) -> str:
    return str(widgets[name]._status.value)


# small samples (the bundled model works at 256 px whatever the size; fewer slices = fewer encoder passes)
image2d, truth2d = synthetic_cells((160, 160), n_cells=6)
image3d, truth3d = synthetic_stack((4, 128, 128), n_cells=4)
for key, image_data, truth_data in (("2d", image2d, truth2d), ("3d", image3d, truth3d)):
    image = viewer.add_image(image_data, name=f"sample {key}")
    truth = viewer.add_labels(truth_data, name=f"truth {key}")
    z = image_data.shape[0] // 2 if image.ndim == 3 else None
    if z is not None:
        viewer.dims.set_current_step(0, z)
    plane = truth_data[z] if z is not None else truth_data
    obj = int(np.bincount(plane.ravel())[1:].argmax()) + 1  # the largest object on the displayed plane
    ys, xs = np.nonzero(plane == obj)
    click = (float(np.median(ys)), float(np.median(xs)))
    one = np.where(truth_data == obj, obj, 0).astype(np.int32)  # one object on every slice it spans
    if z is not None:
        one_slice = np.zeros_like(one)
        one_slice[z] = one[z]
    else:
        one_slice = one
    step = {}

    name = "Segment Anything"
    main = widgets[name]
    main._image.value = image
    main._target.value = viewer.add_labels(np.zeros_like(truth_data), name=f"sam target {key}")
    main._load.native.click()  # bundled model + embedding (inline: NAPARI_SAM_SYNC=1)
    pressed[name].append(["Load model", status(name), None])
    main.controller.add_point(click)
    press_all(name, skip=("Load model",))  # accept, clear, next, box, undo, redo, edit, cancel
    main.controller.add_point(click)
    main._accept.native.click()
    step[name] = status(name)

    name = "Segment stack"
    batch = widgets[name]
    batch._image.value = image
    batch._points.value = 4
    batch._output.value = out_dir / f"{key}_batch.zarr"
    press_all(name)
    step[name] = status(name)

    name = "Fine-tune"
    train = widgets[name]
    train._image.value = image
    train._labels.value = viewer.add_labels(one_slice, name=f"few labels {key}")
    train._epochs.value, train._interactions.value = 1, 1
    train._output.value = out_dir / f"{key}_tuned.pt"
    press_all(name)
    step[name] = status(name)

    name = "Propagate in 3D"
    prop = widgets[name]
    if z is not None:
        prop._image.value = image
        prop._labels.value = viewer.add_labels(one_slice.copy(), name=f"propagation target {key}")
        prop._object.value = obj
        prop._points.value = 4
    press_all(name)
    step[name] = status(name)
    statuses[key] = step
    clicks[key] = click

# the click loop with a SAM 2.1 model (a random hiera_tiny at 256 px: the zoo's would download, and
# a 1024 px one would take minutes on a CPU here); loading SAM 2.1 files is tested in test_zoo/test_sam2_*
from sam2_state import tiny_sam2_model  # noqa: E402

name = "Segment Anything"
main = widgets[name]
main._image.value = viewer.layers["sample 2d"]
main._target.value = viewer.layers["sam target 2d"]
main.set_model(tiny_sam2_model(), name="sam2.1-random")
pressed[name].append(["Load model", status(name), None])
sam2_loaded = main.controller.segmenter is not None and type(main.controller.segmenter.predictor).__name__
main.controller.add_point(clicks["2d"])
press_all(name, skip=("Load model",))
main.controller.add_point(clicks["2d"])
main._accept.native.click()
statuses["sam2"] = {name: status(name), "predictor": sam2_loaded}

result = {
    "heavy_at_start": heavy_at_start,
    "heavy_at_end": loaded(),
    "pressed": pressed,
    "statuses": statuses,
    "n_buttons": {name: len(buttons(w)) for name, w in widgets.items()},
    "layers": [layer.name for layer in viewer.layers],
    "labels_max": {layer.name: int(np.asarray(layer.data).max()) for layer in viewer.layers
                   if layer.__class__.__name__ == "Labels"},
}
viewer.close()
print(json.dumps(result))
