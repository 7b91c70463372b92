"""Crash guard: a viewer (OpenGL context) exists FIRST, then every button of every dock widget.

Loading triton (through torchvision, ``torch._dynamo``, ``torch.compile`` or ``torch.optim``) after
napari created its GL context segfaults under Mesa with a CUDA build of torch (see
docs/troubleshooting.md). conftest.py imports torchvision early, which would hide such a regression,
so the full guard runs ``crash_guard_script.py`` in a fresh interpreter that imports nothing first
(with triton installed, as in the default install). A fast check of the same class without a viewer
runs in the default test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("crash_guard_script.py")
HEAVY = ("torchvision", "triton")


def _run(code_or_path: list[str], env_extra: dict[str, str], timeout: int = 600) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP",)}
    env.update(env_extra)
    out = subprocess.run([sys.executable, *code_or_path], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"rc={out.returncode} (-11 is the segfault)\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_plugin_work_never_loads_torchvision_or_triton(tmp_path):
    """Fast, no viewer: the automatic, batch and training paths the widgets run, after the widgets'
    process guard, load neither torchvision nor triton (torch.optim may load torch._dynamo: harmless then)."""
    code = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        import numpy as np
        from napari_sam.widgets.gl_safety import protect_process
        from napari_sam.engine.models.device import compile_module
        from napari_sam.engine.models.zoo import load_model
        from napari_sam.engine.automatic.amg import SamAutomaticMaskGenerator
        from napari_sam.samples import synthetic_cells
        from napari_sam.training.datasets import pairs_from_arrays
        from napari_sam.training.trainer import TrainConfig, fine_tune
        from napari_sam.engine.progress import run_blocking
        import torch

        protect_process()
        try:
            compile_module(torch.nn.Linear(2, 2))
            refused = False
        except Exception as e:
            refused = "napari" in str(e)
        model = load_model("tiny")
        img, truth = synthetic_cells((128, 128), n_cells=4)
        labels = SamAutomaticMaskGenerator(model, points_per_side=4).generate_labels(img)
        out = Path(sys.argv[1]) / "ft.pt"
        run_blocking(fine_tune(model, pairs_from_arrays(img, truth), out, TrainConfig(epochs=1, n_interactions=1)))
        print(json.dumps({"loaded": [m for m in ("torchvision", "triton") if sys.modules.get(m) is not None],
                          "objects": int(labels.max()), "saved": out.is_file(), "compile_refused": refused}))
        """
    )
    result = _run(["-c", code, str(tmp_path)], {}, timeout=300)
    assert result["loaded"] == [], result
    assert result["objects"] >= 1 and result["saved"] and result["compile_refused"], result


@pytest.mark.slow
@pytest.mark.gui
def test_viewer_first_then_every_button_of_every_dock_widget(tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (run under xvfb-run)")
    # NAPARI_SAM_COMPILE=1: an opt-in torch.compile must not be able to load the compiler in napari
    result = _run([str(SCRIPT), str(tmp_path)], {"NAPARI_SAM_SYNC": "1", "NAPARI_SAM_COMPILE": "1"})
    assert result["heavy_at_start"] == [], result["heavy_at_start"]  # the subprocess starts clean
    assert not set(result["heavy_at_end"]) & set(HEAVY), result["heavy_at_end"]
    # every button of every widget, once per sample (2D and 3D)
    assert set(result["n_buttons"]) == {"Segment Anything", "Segment stack", "Fine-tune", "Propagate in 3D"}
    for name, n in result["n_buttons"].items():  # the main widget's once more with a SAM 2.1 model
        times = 3 if name == "Segment Anything" else 2
        assert n >= 2 and len(result["pressed"][name]) == times * n, (name, result["pressed"][name])
    for key in ("2d", "3d"):
        st = result["statuses"][key]
        assert st["Segment Anything"].startswith("accepted label"), st
        assert "objects in" in st["Segment stack"], st
        assert st["Fine-tune"].startswith("saved"), st
        assert not any(s.startswith("error") for s in st.values()), st
    assert result["statuses"]["3d"]["Propagate in 3D"].endswith("new objects"), result["statuses"]["3d"]
    sam2 = result["statuses"]["sam2"]
    assert sam2["predictor"] == "SAM2ClickPredictor", sam2
    assert not sam2["Segment Anything"].lower().startswith(("error", "could not")), sam2
    assert result["labels_max"]["sam target 2d"] >= 1 and result["labels_max"]["sam target 3d"] >= 1
    assert (tmp_path / "2d_tuned.pt").is_file() and (tmp_path / "3d_batch.zarr").exists()
