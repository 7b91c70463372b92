"""Crash guard: a viewer (OpenGL context) exists FIRST, then every widget path runs.

Importing torchvision / torch._dynamo after napari created its GL context
segfaults under Mesa with this torch (see docs/troubleshooting.md). The test
suite's conftest imports them early, which would hide such a regression, so
this runs in a fresh interpreter that imports nothing beforehand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("napari")

SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import numpy as np
    import napari
    viewer = napari.Viewer(show=False)          # the GL context exists from here on
    viewer.open_sample("napari-sam-lab", "synthetic_cells")
    _, w = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    w._image.value = viewer.layers["synthetic cells"]
    w._model.value = "from file..."
    w._model_file.value = sys.argv[1]
    w._precision.value = "fp32"
    w._load.clicked.emit()                      # model load + embedding (inline: NAPARI_SAM_SYNC=1)
    ctl = w.controller
    assert ctl.segmenter is not None, w._status.value
    assert ctl.segmenter.has_embedding(None), w._status.value
    ctl.add_point((60, 60)); w._next.clicked.emit()
    ctl.add_point((70, 70), positive=False)
    w._box.clicked.emit(); ctl.add_box((40, 40, 90, 90))
    w._accept.clicked.emit()
    w._undo.clicked.emit(); w._redo.clicked.emit()
    w._edit_id.value = 1; w._edit.clicked.emit()
    ctl.add_point((60, 60)); w._accept.clicked.emit()
    w._clear.clicked.emit()
    viewer.open_sample("napari-sam-lab", "synthetic_stack")
    w._image.value = viewer.layers["synthetic stack"]
    viewer.dims.set_current_step(0, 5)
    ctl.add_point((90, 90)); w._accept.clicked.emit()
    w._cancel.clicked.emit()
    w._precision.value = "int8"; w._load.clicked.emit()  # the int8 encoder, after the GL context exists
    assert ctl.segmenter.predictor.precision == "int8", w._status.value
    ctl.add_point((80, 80)); w._clear.clicked.emit()
    viewer.layers.remove(viewer.layers["synthetic stack"])
    print(json.dumps({"torchvision": "torchvision" in sys.modules, "dynamo": "torch._dynamo" in sys.modules,
                      "triton": "triton" in sys.modules,
                      "labels": int(viewer.layers["SAM labels"].data.max())}))
    viewer.close()
    """
)


def test_viewer_first_then_every_widget_path(tiny_checkpoint, tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (run under xvfb-run)")
    script = tmp_path / "guard.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, NAPARI_SAM_SYNC="1")
    out = subprocess.run([sys.executable, str(script), tiny_checkpoint], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, f"rc={out.returncode} (-11 is the segfault)\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["labels"] >= 1
    assert not result["torchvision"] and not result["dynamo"] and not result["triton"], result
