"""Every fenced python/bash block of README.md and docs/*.md runs (on the bundled model, offline).

A page is run top to bottom, as a reader would: its python blocks share one namespace, in a fresh
temporary folder. Markers, on the line just before a block's fence:

- ``<!-- doc-test: skip (reason) -->``: not run (installs, downloads, starts an event loop...);
- ``<!-- doc-test: given NAME ... -->``: runs with the reader's data the text speaks of, made here:
  ``image`` (2D nuclei), ``stack`` (a (Z, Y, X) stack), ``viewer`` (a napari viewer, as napari's
  console has), and the files ``nuclei.tif``, ``huge.ome.tif``, ``imgs/`` + ``labels/`` (training pairs),
  ``movie.tif`` + ``seeds.tif`` (a small time-lapse and its objects on frame 0), ``sam2.1_hiera_tiny.pt``
  (a SAM 2.1 checkpoint file, random weights, recorded for a 256 px input).

A block containing a ``# needs-download`` line is skipped too (the reason: it needs a download).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"<!--\s*doc-test:\s*(\w+)\s*(?:\((.*)\))?([^>]*?)\s*-->")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str | None
    reason: str
    given: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        if self.marker == "skip":
            return self.reason or "marked skip"
        if re.search(r"^\s*#\s*needs-download\b", self.code, re.M):
            return "needs a download"
        return None


def blocks(page: Path) -> list[Block]:
    """The fenced python/bash blocks of ``page``, with the marker on the line before each."""
    out, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        start, j = i, i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mk = MARKER.search(prev)
        lang = LANGUAGES.get(m.group(1).lower())
        if lang is not None:
            out.append(Block(page, start + 1, lang, "\n".join(lines[start + 1: j]) + "\n",
                             mk.group(1) if mk else None, (mk.group(2) or "") if mk else "",
                             tuple(mk.group(3).split()) if mk and mk.group(1) == "given" else ()))
        i = j + 1
    return out


def test_blocks_are_found_and_markers_are_known():
    found = [b for p in PAGES for b in blocks(p)]
    assert len(found) >= 20
    assert {b.marker for b in found} <= {None, "skip", "given"}, {b.marker for b in found}
    assert {g for b in found for g in b.given} <= set(GIVEN), {g for b in found for g in b.given}
    assert all(b.skip_reason != "marked skip" for b in found), "give every skip marker a reason"


def _image(ns, request):
    from napari_sam.samples import synthetic_cells

    return synthetic_cells()[0]


def _stack(ns, request):
    from napari_sam.samples import synthetic_stack

    return synthetic_stack((16, 192, 192), seed=2)[0]  # a nucleus under the pages' click (120, 80) on slice 10


def _viewer(ns, request):
    return request.getfixturevalue("make_napari_viewer")()


def _nuclei_tif(ns, request):
    import tifffile

    from napari_sam.samples import synthetic_stack

    tifffile.imwrite("nuclei.tif", synthetic_stack((3, 96, 96))[0], metadata={"axes": "ZYX"})  # 3 slices, not channels


def _huge_ome_tif(ns, request):
    import tifffile

    from napari_sam.samples import synthetic_stack

    tifffile.imwrite("huge.ome.tif", synthetic_stack((3, 96, 96))[0], ome=True, metadata={"axes": "ZYX"})


def _training_folders(ns, request):
    import tifffile

    from napari_sam.samples import synthetic_cells

    for d in ("imgs", "labels"):
        Path(d).mkdir(exist_ok=True)
    for i in range(2):
        img, lab = synthetic_cells((96, 96), n_cells=3, seed=i)
        tifffile.imwrite(f"imgs/cell{i}.tif", img)
        tifffile.imwrite(f"labels/cell{i}.tif", lab)


def _movie_tif(ns, request):
    """A small time-lapse (T, Y, X) with TYX metadata, and ``seeds.tif``: its objects on frame 0."""
    import tifffile

    from napari_sam.samples import synthetic_stack

    movie, labels = synthetic_stack((3, 96, 96), n_cells=3, seed=1)
    tifffile.imwrite("movie.tif", movie, photometric="minisblack", metadata={"axes": "TYX"})
    tifffile.imwrite("seeds.tif", labels[0])


def _sam2_checkpoint(ns, request):
    """A SAM 2.1 hiera_tiny checkpoint in Meta's format (random weights: nothing can be downloaded here).

    It records a 256 px input (``image_size``; Meta's files have none and run at 1024 px), so the
    pages' tracking runs in seconds per frame instead of minutes on a small CPU.
    """
    import torch

    from napari_sam.model.sam2 import build_sam2

    torch.save({"model": build_sam2("sam2.1_hiera_tiny").state_dict(), "image_size": 256}, "sam2.1_hiera_tiny.pt")


GIVEN = {"image": _image, "stack": _stack, "viewer": _viewer, "nuclei.tif": _nuclei_tif,
         "huge.ome.tif": _huge_ome_tif, "imgs/": _training_folders, "movie.tif": _movie_tif,
         "sam2.1_hiera_tiny.pt": _sam2_checkpoint}


def _env(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "_bin"
    shim.mkdir(exist_ok=True)
    cli = shim / "napari-sam"  # the command line of the code under test, whatever is installed
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m napari_sam "$@"\n')
    cli.chmod(0o755)
    src = str(ROOT / "src")
    return dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ.get('PATH', '')}", NAPARI_SAM_OFFLINE="1",
                PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p),
                NAPARI_SAM_SYNC="1")


# README.md runs in the default test run; the docs pages take minutes on a small CPU (training, a viewer)
PARAMS = [pytest.param(p, marks=() if p.name == "README.md" else pytest.mark.slow, id=p.name) for p in PAGES]


@pytest.mark.parametrize("page", PARAMS)
def test_page_code_runs(page, tmp_path, monkeypatch, request):
    runnable = [b for b in blocks(page) if b.skip_reason is None]
    if not runnable:
        pytest.skip(f"no runnable blocks in {page.name}")
    monkeypatch.chdir(tmp_path)
    env = _env(tmp_path)
    for key in ("NAPARI_SAM_OFFLINE", "NAPARI_SAM_SYNC"):
        monkeypatch.setenv(key, env[key])
    namespace: dict = {"__name__": "__doc_test__"}
    for block in runnable:
        for name in block.given:
            if name not in namespace:
                namespace[name] = GIVEN[name](namespace, request)
        if block.language == "python":
            try:
                exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102  (our own docs)
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{block.where}: {type(e).__name__}: {e}")
        else:
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, f"{block.where}: exit {out.returncode}\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
