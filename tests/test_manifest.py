"""The npe2 manifest: valid, and every python_name resolves (micro-sam's test_imports idea)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_distribution("napari-sam-lab")


def test_manifest_names(manifest):
    assert manifest.name == "napari-sam-lab"
    assert manifest.display_name == "napari-sam"
    assert any(w.display_name == "Segment Anything" for w in manifest.contributions.widgets)


def test_every_python_name_resolves(manifest):
    commands = manifest.contributions.commands
    assert commands
    for cmd in commands:
        module, _, attr = cmd.python_name.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), cmd.python_name
    referenced = {w.command for w in manifest.contributions.widgets}
    referenced |= {s.command for s in manifest.contributions.sample_data}
    assert referenced <= {c.id for c in commands}


def test_python_names_point_at_submodules(manifest):
    for cmd in manifest.contributions.commands:
        assert cmd.python_name.split(":")[0] != "napari_sam", "keep `import napari_sam` light"


def test_synthetic_samples_are_layer_data():
    from napari_sam import samples

    for fn in (samples.cells_sample, samples.stack_sample):
        out = fn()
        (img, meta, kind), (labels, _, lkind) = out
        assert kind == "image" and lkind == "labels" and img.shape == labels.shape
        assert img.dtype == np.uint16 and labels.max() >= 3
        # the drawn objects are brighter than the background
        assert img[labels > 0].mean() > 2 * img[labels == 0].mean()
    img, meta, kind = samples.skimage_cell_sample()[0]
    assert img.shape == (660, 550) and kind == "image"


def test_downloaded_sample_fails_with_clear_message(monkeypatch):
    from skimage import data

    from napari_sam import samples

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setattr(data, "cells3d", offline)
    with pytest.raises(OSError, match="downloaded on first use"):
        samples.skimage_cells3d_sample()
