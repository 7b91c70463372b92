"""The Qt binding napari recommends (PyQt6; its PyQt5 support is deprecated): installed and tested with it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> tuple[list[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"], project["optional-dependencies"]


def test_no_qt_binding_in_install_dependencies_and_pyqt6_in_the_extras():
    deps, extras = _requirements()
    qt = re.compile(r"pyqt|pyside|napari\[", re.IGNORECASE)
    assert not [d for d in deps if qt.search(d)], "a Qt binding (or napari with one) in the install dependencies"
    for extra in ("napari", "test"):
        named = [d for d in extras[extra] if d.lower().startswith("napari")]
        assert named and all("[pyqt6]" in d.lower() for d in named), (extra, named)
    assert not [d for reqs in extras.values() for d in reqs if "pyqt5" in d.lower()]


def test_the_test_run_asks_qtpy_and_pytest_qt_for_pyqt6():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert re.search(r'QT_API="\$\{QT_API:-pyqt6\}"', script) and "PYTEST_QT_API" in script
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.skipif(importlib.util.find_spec("PyQt6") is None, reason="PyQt6 is not installed in this environment")
def test_napari_runs_on_pyqt6_without_the_pyqt5_deprecation_warning():
    code = (
        "import os, warnings\n"
        "os.environ['QT_API'] = 'pyqt6'\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import qtpy\n"
        "    from napari._qt.qt_event_loop import get_qapp\n"
        "    get_qapp()\n"
        "print(qtpy.API_NAME)\n"
        "print(sum('PyQt5' in str(w.message) for w in caught))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr
    api, pyqt5_warnings = out.stdout.strip().splitlines()[-2:]
    assert api == "PyQt6" and pyqt5_warnings == "0", out.stdout
