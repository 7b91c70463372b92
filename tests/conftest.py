"""Shared fixtures.

torchvision (and torch._dynamo) are imported here, before any napari viewer
creates an OpenGL context: importing them afterwards segfaults with this torch
under Mesa (triton's LLVM clashes with Mesa's). See docs/troubleshooting.md.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (import order matters, see module docstring)
import torch._dynamo  # noqa: F401

TORCH_THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test (or its fixtures) may run torch on one thread; the next test starts on the suite's
    count again, since some results (the bit-exact comparisons) depend on it."""
    yield
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(autouse=True)
def _default_model_isolated(tmp_path_factory, monkeypatch):
    """The default model must not depend on the machine: no ``$NAPARI_SAM_MODEL`` and an empty weights
    cache (a light-microscopy model downloaded there would otherwise become the default)."""
    monkeypatch.delenv("NAPARI_SAM_MODEL", raising=False)
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "empty_weights_cache"))


def perturbed_state_dict(model: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """A state dict with every float tensor perturbed by noise (many SAM tensors initialise to zero)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
        out[k] = v.clone()
    return out


@pytest.fixture(scope="session")
def vit_b_pair():
    """(Meta's vit_b, napari-sam's vit_b) in eval mode with the same perturbed random weights,
    built once per test session (building and perturbing vit_b takes a while)."""
    segment_anything = pytest.importorskip("segment_anything")
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    ref = segment_anything.sam_model_registry["vit_b"]()
    sd = perturbed_state_dict(ref, seed=3)
    ref.load_state_dict(sd)
    ours = build_sam("vit_b")
    ours.load_state_dict(sd, strict=True)
    return ref.eval(), ours.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A checkpoint file of the small 'tiny' architecture with random (perturbed) weights."""
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    model = build_sam("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny_random.pt"
    torch.save(perturbed_state_dict(model, seed=1), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """A random-weight 'tiny' SAM (256 px input), fast enough for many tests."""
    from napari_sam.model import build_sam

    return build_sam("tiny", checkpoint=tiny_checkpoint)


@pytest.fixture()
def cells_image() -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence image (uint16, 200 x 240) and its instance labels."""
    from skimage.draw import ellipse
    from skimage.filters import gaussian

    rng = np.random.default_rng(0)
    labels = np.zeros((200, 240), np.int32)
    centres = [(50, 60), (60, 170), (140, 80), (150, 180)]
    for i, (r, c) in enumerate(centres, start=1):
        rr, cc = ellipse(r, c, 28, 22, labels.shape, rotation=0.3 * i)
        labels[rr, cc] = i
    img = gaussian((labels > 0).astype(float), 2) * 3000 + 200
    img = rng.poisson(img).astype(np.uint16)
    return img, labels


@pytest.fixture()
def otsu_model(monkeypatch):
    """The default SAM slice segmenter replaced by a classical one (a command's plumbing is under test);
    yields the list of specs it was built from."""
    from napari_sam.engine.automatic import slice_segmenter

    built = []

    def build(self):
        built.append(self)
        return slice_segmenter.otsu_labels

    monkeypatch.setattr(slice_segmenter.SliceSegmenterSpec, "build", build)
    slice_segmenter._CACHE.clear()
    yield built
    slice_segmenter._CACHE.clear()


@pytest.fixture()
def click_viewer(make_napari_viewer, monkeypatch, tiny_model):
    """A real viewer with a 180 x 220 cells image, the main dock widget on the random tiny model:
    (viewer, controller, image, truth). Embeddings are computed synchronously."""
    import napari_sam.widgets.main_widget as mw
    from napari_sam.samples import synthetic_cells

    monkeypatch.setattr(mw, "_default_model", lambda: None)
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    viewer = make_napari_viewer()
    img, truth = synthetic_cells((180, 220), n_cells=8, seed=3)
    viewer.add_image(img, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    widget.set_model(tiny_model, name="tiny-random", precision="fp32")
    return viewer, widget.controller, img, truth
