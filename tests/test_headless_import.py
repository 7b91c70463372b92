"""Importing the library must not pull in Qt, napari or magicgui (scripts, clusters, notebooks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

GUI_MODULES = ("qtpy", "PyQt5", "PySide2", "PyQt6", "PySide6", "napari", "magicgui", "vispy")


@pytest.mark.parametrize(
    "modules",
    [
        ("napari_sam", "napari_sam.model", "napari_sam.engine"),
        ("napari_sam.engine.prediction.segmenter", "napari_sam.engine.models.zoo", "napari_sam.samples"),
    ],
)
def test_library_imports_no_gui(modules):
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"print(json.dumps(sorted(m for m in {GUI_MODULES!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {modules} pulled in GUI modules: {loaded}"


def test_gui_modules_do_not_import_torchvision_or_dynamo():
    """The widget's import path must stay clear of torchvision / torch._dynamo (segfault after GL init)."""
    code = (
        "import json, sys\n"
        "import napari_sam.widgets.main_widget, napari_sam.adapters.controller, napari_sam.samples\n"
        "print(json.dumps(sorted(m for m in ('torchvision', 'torch._dynamo', 'triton') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
