"""Model zoo: registry, download cache, offline mode and safe loading.

Nothing here touches the internet: zoo entries are pointed at a local HTTP
server on 127.0.0.1 serving checkpoint files the tests write themselves, and
the cache lives in a temporary folder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from napari_sam.engine.models import weights_cache
from napari_sam.engine.models import zoo
from napari_sam.errors import CheckpointError, DownloadError, UnknownModelError


class NotATensor:
    """A picklable object that ``weights_only`` loading must refuse."""

    def __init__(self) -> None:
        self.payload = "anything"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Point the weights cache at a temporary folder; network allowed; CPU only."""
    base = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(base))
    monkeypatch.delenv("NAPARI_SAM_OFFLINE", raising=False)
    monkeypatch.setenv("NAPARI_SAM_DEVICE", "cpu")
    return base / "models"


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                log.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path / "served"``, stopped after the test."""
    root = tmp_path / "served"
    root.mkdir()
    srv = _Server(root)
    yield srv
    srv.stop()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def served_entry(server, tiny_checkpoint, monkeypatch):
    """A zoo entry 'test_tiny' whose weights (the tiny random checkpoint) come from the local server."""
    src = Path(tiny_checkpoint)
    (server.root / "tiny.pt").write_bytes(src.read_bytes())
    entry = zoo.ModelEntry(
        name="test_tiny",
        architecture="tiny",
        description="random tiny model for tests",
        source="tests",
        license="BSD-3-Clause",
        url=server.url("tiny.pt"),
        filename="test_tiny.pt",
        known_hash="sha256:" + _sha256(src),
        size=src.stat().st_size,
    )
    monkeypatch.setitem(zoo.REGISTRY, entry.name, entry)
    return entry


def _same_weights(model: torch.nn.Module, path: str) -> bool:
    ref = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    return set(own) == set(ref) and all(torch.equal(own[k], ref[k]) for k in ref)


# --- download and cache ----------------------------------------------------------------------


def test_first_fetch_downloads_and_loads(served_entry, server, isolated_cache, tiny_checkpoint):
    model = zoo.load_model("test_tiny", device="cpu")
    assert server.requests == ["/tiny.pt"]
    assert (isolated_cache / "test_tiny.pt").is_file()
    assert not model.training
    assert not hasattr(model, "precision")  # chosen where it runs, not stored on the model
    assert next(model.parameters()).device.type == "cpu"
    assert _same_weights(model, tiny_checkpoint)


def test_progress_bar_download(served_entry, server, isolated_cache):
    path = zoo.weights_path("test_tiny", progressbar=True)
    assert path == isolated_cache / "test_tiny.pt" and len(server.requests) == 1


def test_second_use_hits_cache_without_network(served_entry, server, monkeypatch, tiny_checkpoint):
    zoo.load_model("test_tiny", device="cpu", progressbar=False)
    server.stop()
    model = zoo.load_model("test_tiny", device="cpu", progressbar=False)
    monkeypatch.setenv("NAPARI_SAM_OFFLINE", "1")
    model2 = zoo.load_model("test_tiny", device="cpu", progressbar=False)
    assert server.requests == ["/tiny.pt"]
    assert _same_weights(model, tiny_checkpoint) and _same_weights(model2, tiny_checkpoint)


def test_wrong_hash_fails_clearly(served_entry, monkeypatch, isolated_cache):
    bad = dataclasses.replace(served_entry, known_hash="sha256:" + "0" * 64)
    monkeypatch.setitem(zoo.REGISTRY, bad.name, bad)
    with pytest.raises(DownloadError, match="verification") as info:
        zoo.load_model("test_tiny", device="cpu", progressbar=False)
    assert served_entry.url in str(info.value)
    assert not (isolated_cache / "test_tiny.pt").exists()


def test_truncated_cached_file_is_refetched(served_entry, server, isolated_cache, tiny_checkpoint):
    zoo.load_model("test_tiny", device="cpu", progressbar=False)
    cached = isolated_cache / "test_tiny.pt"
    data = cached.read_bytes()
    cached.write_bytes(data[: len(data) // 2])
    model = zoo.load_model("test_tiny", device="cpu", progressbar=False)
    assert server.requests == ["/tiny.pt", "/tiny.pt"]
    assert cached.read_bytes() == data
    assert _same_weights(model, tiny_checkpoint)


def test_corrupt_cached_file_same_size_is_refetched(served_entry, server, isolated_cache):
    zoo.weights_path("test_tiny", progressbar=False)
    cached = isolated_cache / "test_tiny.pt"
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))  # same size, new mtime: the hash is checked again
    zoo.weights_path("test_tiny", progressbar=False)
    assert len(server.requests) == 2
    assert _sha256(cached) == served_entry.known_hash.split(":")[1]


def test_hashless_entry_truncated_cache_is_refetched(
    served_entry, server, monkeypatch, isolated_cache, tiny_checkpoint
):
    """Without hash or size, a damaged cached file is caught by the strict load and fetched again."""
    nohash = dataclasses.replace(served_entry, known_hash=None, size=None)
    monkeypatch.setitem(zoo.REGISTRY, nohash.name, nohash)
    zoo.load_model("test_tiny", device="cpu", progressbar=False)
    cached = isolated_cache / "test_tiny.pt"
    cached.write_bytes(cached.read_bytes()[:1000])
    model = zoo.load_model("test_tiny", device="cpu", progressbar=False)
    assert len(server.requests) == 2
    assert _same_weights(model, tiny_checkpoint)


def test_unavailable_hash_algorithm_falls_back_to_strict_load(served_entry, monkeypatch, tiny_checkpoint):
    monkeypatch.setitem(__import__("sys").modules, "xxhash", None)  # as if not installed
    assert not weights_cache.hash_is_checkable("xxh128:" + "0" * 32)
    xx = dataclasses.replace(served_entry, known_hash="xxh128:" + "0" * 32, size=None)
    monkeypatch.setitem(zoo.REGISTRY, xx.name, xx)
    assert _same_weights(zoo.load_model("test_tiny", device="cpu", progressbar=False), tiny_checkpoint)


# --- offline / no network ----------------------------------------------------------------------


def test_offline_env_gives_download_error_naming_file_and_folder(served_entry, server, monkeypatch, isolated_cache):
    monkeypatch.setenv("NAPARI_SAM_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        zoo.load_model("test_tiny", device="cpu")
    msg = str(info.value)
    assert served_entry.url in msg and "test_tiny.pt" in msg and str(isolated_cache) in msg
    assert server.requests == []


def test_server_down_gives_download_error(served_entry, monkeypatch, isolated_cache):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = dataclasses.replace(served_entry, url=f"http://127.0.0.1:{port}/tiny.pt")
    monkeypatch.setitem(zoo.REGISTRY, down.name, down)
    with pytest.raises(DownloadError) as info:
        zoo.load_model("test_tiny", device="cpu", progressbar=False)
    msg = str(info.value)
    assert down.url in msg and "test_tiny.pt" in msg and str(isolated_cache) in msg
    assert not (isolated_cache / "test_tiny.pt").exists()


def test_offline_with_damaged_cache(served_entry, monkeypatch, isolated_cache):
    zoo.weights_path("test_tiny", progressbar=False)
    cached = isolated_cache / "test_tiny.pt"
    cached.write_bytes(cached.read_bytes()[:100])
    monkeypatch.setenv("NAPARI_SAM_OFFLINE", "1")
    with pytest.raises(DownloadError, match="damaged"):
        zoo.load_model("test_tiny", device="cpu")


# --- names and registry ----------------------------------------------------------------------


def test_unknown_name_lists_known_models():
    with pytest.raises(UnknownModelError) as info:
        zoo.load_model("vit_q")
    msg = str(info.value)
    assert "vit_q" in msg and "vit_b" in msg and "vit_b_lm" in msg


def test_registry_contents():
    names = [e.name for e in zoo.list_models(include_unavailable=True)]
    for name in ("vit_b", "vit_l", "vit_h", "vit_t", "vit_b_lm", "vit_b_em_organelles", "tiny"):
        assert name in names
    downloadable = [e for e in zoo.list_models(include_unavailable=True) if not e.bundled]
    assert len({e.filename for e in downloadable}) == len(downloadable)
    for e in downloadable:
        assert e.url.startswith("https://") and e.filename and e.known_hash
        assert e.architecture in ("vit_b", "vit_l", "vit_h", "vit_t")
        with pytest.raises(dataclasses.FrozenInstanceError):
            e.name = "x"  # type: ignore[misc]
    assert zoo.REGISTRY["vit_b"].known_hash.startswith("sha256:")
    assert zoo.REGISTRY["vit_b"].url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")


def test_zoo_model_type_must_agree(served_entry):
    with pytest.raises(CheckpointError, match="tiny"):
        zoo.load_model("test_tiny", model_type="vit_b")


def test_bundled_entry_missing_file(monkeypatch):
    missing = dataclasses.replace(zoo.REGISTRY["tiny"], package_path="weights/not_there.pt")
    monkeypatch.setitem(zoo.REGISTRY, "tiny", missing)
    assert "tiny" not in [e.name for e in zoo.list_models()]
    assert "tiny" in [e.name for e in zoo.list_models(include_unavailable=True)]
    with pytest.raises(CheckpointError, match="missing"):
        zoo.load_model("tiny", device="cpu")


def test_bundled_entry_present(monkeypatch, tmp_path, tiny_checkpoint):
    pkg = tmp_path / "napari_sam_pkg"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "weights" / "tiny.pt").write_bytes(Path(tiny_checkpoint).read_bytes())
    monkeypatch.setattr(zoo, "bundled_path", lambda entry: pkg / entry.package_path)
    assert "tiny" in [e.name for e in zoo.list_models()]
    assert _same_weights(zoo.load_model("tiny", device="cpu"), tiny_checkpoint)


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert weights_cache.cache_dir() == tmp_path / "elsewhere" / "models"
    monkeypatch.delenv("NAPARI_SAM_CACHE_DIR")
    assert weights_cache.cache_dir().name == "models" and "napari-sam" in str(weights_cache.cache_dir())


# --- local files ------------------------------------------------------------------------------


def test_local_path_strict_load(tiny_checkpoint):
    for arg in (tiny_checkpoint, Path(tiny_checkpoint)):
        model = zoo.load_model(arg, device="cpu")
        assert _same_weights(model, tiny_checkpoint)
    assert _same_weights(zoo.load_model(tiny_checkpoint, device="cpu", model_type="tiny"), tiny_checkpoint)


def test_local_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        zoo.load_model("/no/such/dir/weights.pt")


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="Refused"):
        zoo.load_model(path, device="cpu")


def test_truncated_local_file(tmp_path, tiny_checkpoint):
    path = tmp_path / "cut.pt"
    data = Path(tiny_checkpoint).read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        zoo.load_model(path, device="cpu")


def test_wrong_model_type_names_likely_type(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="'tiny'") as info:
        zoo.load_model(tiny_checkpoint, device="cpu", model_type="vit_b")
    assert "vit_b" in str(info.value)


def test_mismatched_keys_are_listed(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="iou_token"):
        zoo.load_model(path, device="cpu")


def test_micro_sam_layout_is_unwrapped(tmp_path, tiny_checkpoint):
    """micro-sam / torch_em: weights under "model_state" with a "sam." prefix, plus a decoder_state."""
    state = torch.load(tiny_checkpoint, weights_only=True)
    wrapped = {
        "model_state": {"sam." + k: v for k, v in state.items()},
        "decoder_state": {"decoder.conv.weight": torch.zeros(2, 2)},
    }
    path = tmp_path / "micro_sam.pt"
    torch.save(wrapped, path)
    # that decoder_state is no instance decoder: a clear error, and the way round it
    with pytest.raises(CheckpointError, match="not an instance-decoder state dict(.|\n)*with_decoder=False"):
        zoo.load_model(path, device="cpu")
    assert _same_weights(zoo.load_model(path, device="cpu", with_decoder=False), tiny_checkpoint)
    # Unprefixed keys under "model_state" (micro-sam's combined BioImage.IO export) work as well.
    torch.save({"model_state": state, "decoder_state": {}}, path)
    assert _same_weights(zoo.load_model(path, device="cpu"), tiny_checkpoint)


def test_state_dict_wrapper_is_unwrapped(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": state, "epoch": 3}, path)
    assert _same_weights(zoo.load_model(path, device="cpu"), tiny_checkpoint)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, tiny_checkpoint, bad):
    """Weights with NaN/inf gave empty masks and NaN scores without a word; now refused at load."""
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["mask_decoder.iou_token.weight"][0, 0] = bad
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or infinite.*iou_token"):
        zoo.load_model(path, device="cpu")
    from napari_sam.model import build_sam

    with pytest.raises(CheckpointError, match="NaN or infinite"):
        build_sam("tiny", checkpoint=path)
