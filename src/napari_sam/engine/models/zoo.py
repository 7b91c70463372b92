"""The model zoo: named, published SAM weights, and ``load_model`` for names or files.

``load_model("vit_b")`` downloads Meta's ViT-B weights on first use into the
per-user cache (see :mod:`napari_sam.engine.models.weights_cache`), checks them, and
returns a :class:`~napari_sam.model.Sam` in eval mode. ``load_model(path)``
loads a local file, guessing the architecture from its tensors.

Provenance of the registry (hashes are the publishers' or widely published ones,
never computed here):

- ``vit_b``/``vit_l``/``vit_h``: Meta's URLs; sha256 and sizes as recorded in
  micro-sam's registry (``micro_sam/util.py``, older sha256 version) and many
  independent projects.
- ``vit_t``: MobileSAM's ``weights/mobile_sam.pt`` at commit f706ad9 of
  ChaoningZhang/MobileSAM; sha256 as recorded by micro-sam for its mirror of the
  same file and by independent projects pinning that commit.
- ``*_lm`` / ``*_em_organelles``: micro-sam's generalist fine-tunes, the weight
  file inside their BioImage.IO packages, URLs and xxh128 hashes from
  micro-sam's current registry (``micro_sam/v1/util.py``). xxh128 can only be
  checked when the optional ``xxhash`` package is installed; otherwise these
  files are verified only by loading them strictly into the architecture.
- ``*_histopathology`` (Griebel et al. 2025, "Segment Anything for
  Histopathology", github.com/computational-cell-analytics/patho-sam) and
  ``vit_b_medical_imaging`` (micro-sam's MedicoSAM): URLs (owncloud.gwdg.de
  shares) and xxh128 hashes from micro-sam's registry ``models()`` in
  ``micro_sam/util.py`` (commit 3acdcd7 of computational-cell-analytics/micro-sam,
  August 2026).
- Instance decoders (``ModelEntry.decoder``): micro-sam's ten published
  ``*_decoder`` files, from the same registry (same commit): the BioImage.IO
  packages' ``vit_*_decoder.pt`` for the light- and electron-microscopy models,
  owncloud shares for histopathology and medical imaging; each xxh128-hashed.
  ``load_model`` fetches an entry's decoder beside its encoder.
- ``sam2.1_hiera_*``: Meta's SAM 2.1 checkpoints; URLs as in Meta's
  ``checkpoints/download_ckpts.sh`` (facebookresearch/sam2, SAM2p1_BASE_URL) and in
  micro-sam's development branch (``micro_sam/v2/util.py``, ``URLS``); sha256 as
  recorded in micro-sam's ``micro_sam/v2/util.py`` (``HASHES``); the tiny file's
  sha256 and size (156,008,466 bytes) are also pinned by several independent projects.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import CheckpointError, UnknownModelError
from . import instance_decoders, weights_cache
from .default_model import BUNDLED_DEFAULT, downloaded_default
from .auto_defaults import zoo_defaults

_log = logging.getLogger(__name__)


def read_state_dict(path):
    """:func:`napari_sam.model.checkpoint.read_state_dict`, imported on use: listing the zoo needs no torch."""
    from ...model.checkpoint import read_state_dict as read

    return read(path)


@dataclass(frozen=True)
class DecoderFile:
    """A published instance-decoder file that belongs to one zoo model's encoder."""

    url: str
    filename: str
    known_hash: str | None
    source: str
    size: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One named model of the zoo.

    A downloadable entry has ``url`` and ``filename`` (its name in the cache).
    A bundled entry (``bundled=True``) ships inside the package at
    ``package_path`` (relative to ``napari_sam``) and has no URL.
    ``known_hash`` is a pooch hash string (``"sha256:..."``, ``"md5:..."``,
    ``"xxh128:..."``) or ``None`` when no published hash exists; the file is
    then verified only by a successful strict load.
    """

    name: str
    architecture: str  # vit_b, vit_l, vit_h, vit_t, tiny or a SAM 2.1 preset (sam2.1_hiera_*)
    description: str
    source: str
    license: str
    url: str | None = None
    filename: str | None = None
    known_hash: str | None = None
    size: int | None = None  # bytes
    bundled: bool = False
    package_path: str | None = None
    decoder: DecoderFile | None = None  # trained instance decoder for automatic segmentation
    #: a bundled file that carries its own instance decoder (``instance_decoder.*`` keys), so
    #: the zoo can say so without reading the file
    bundled_decoder: bool = False
    #: the automatic-segmentation thresholds that suit this model, as (setting, value) pairs named like
    #: :class:`~napari_sam.engine.automatic.settings.AutoSettings` fields (see
    #: :mod:`napari_sam.engine.models.auto_defaults`); used where the user gives none
    automatic: tuple[tuple[str, float], ...] = ()

    @property
    def family(self) -> str:
        """``"sam"`` (SAM 1: SamPredictor, the widgets) or ``"sam2"`` (SAM 2.1: the SAM 2 predictors)."""
        return "sam2" if self.architecture.startswith("sam2") else "sam"

    @property
    def available(self) -> bool:
        """False only for a bundled entry whose file is absent from this installation."""
        return not self.bundled or bundled_path(self).is_file()


_META = "Meta AI, Segment Anything (Kirillov et al. 2023), github.com/facebookresearch/segment-anything"
_MICRO_SAM = (
    "micro-sam (Archit et al. 2025, Nature Methods), "
    "github.com/computational-cell-analytics/micro-sam; BioImage.IO model"
)
_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"
_META2 = "Meta AI, SAM 2 (Ravi et al. 2024), github.com/facebookresearch/sam2"
_SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_MOBILE_SAM_COMMIT = "f706ad9c4eb7f219c00d9050e46328518ffb65d2"


def _micro_sam(
    name: str, arch: str, bioimageio_id: str, version: str, xxh128: str, what: str, decoder_xxh128: str
) -> ModelEntry:
    source = f"{_MICRO_SAM} '{bioimageio_id}' v{version}"
    return ModelEntry(
        name=name,
        architecture=arch,
        description=f"SAM {arch.upper().replace('_', '-')} fine-tuned by micro-sam for {what}",
        source=source,
        license="not recorded here: see the BioImage.IO model card",
        url=f"{_BIOIMAGEIO}/{bioimageio_id}/{version}/files/{arch}.pt",
        filename=f"micro_sam_{name}_v{version}.pt",
        known_hash=f"xxh128:{xxh128}",
        decoder=DecoderFile(
            url=f"{_BIOIMAGEIO}/{bioimageio_id}/{version}/files/{arch}_decoder.pt",
            filename=f"micro_sam_{name}_decoder_v{version}.pt",
            known_hash=f"xxh128:{decoder_xxh128}",
            source=source,
        ),
        automatic=zoo_defaults(name),
    )


_OWNCLOUD = "https://owncloud.gwdg.de/index.php/s"
_PATHO_SAM = (
    "patho-sam (Griebel et al. 2025, Segment Anything for Histopathology), "
    "github.com/computational-cell-analytics/patho-sam, via micro-sam's registry"
)
_MEDICO_SAM = "micro-sam's medical-imaging model (MedicoSAM, Archit et al. 2025), via micro-sam's registry"


def _owncloud(
    name: str, arch: str, share: str, xxh128: str, what: str, source: str, decoder_share: str, decoder_xxh128: str
) -> ModelEntry:
    return ModelEntry(
        name=name,
        architecture=arch,
        description=f"SAM {arch.upper().replace('_', '-')} fine-tuned for {what}",
        source=source,
        license="not recorded here: see the publishers' repository",
        url=f"{_OWNCLOUD}/{share}/download",
        filename=f"micro_sam_{name}.pt",
        known_hash=f"xxh128:{xxh128}",
        decoder=DecoderFile(
            url=f"{_OWNCLOUD}/{decoder_share}/download",
            filename=f"micro_sam_{name}_decoder.pt",
            known_hash=f"xxh128:{decoder_xxh128}",
            source=source,
        ),
    )


_ENTRIES = (
    ModelEntry(
        "vit_b", "vit_b", "Segment Anything, ViT-B encoder (91M parameters)", _META, "Apache-2.0",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        filename="sam_vit_b_01ec64.pth",
        known_hash="sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size=375042383,
    ),
    ModelEntry(
        "vit_l", "vit_l", "Segment Anything, ViT-L encoder (308M parameters)", _META, "Apache-2.0",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        filename="sam_vit_l_0b3195.pth",
        known_hash="sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size=1249524607,
    ),
    ModelEntry(
        "vit_h", "vit_h", "Segment Anything, ViT-H encoder (636M parameters)", _META, "Apache-2.0",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        filename="sam_vit_h_4b8939.pth",
        known_hash="sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size=2564550879,
    ),
    ModelEntry(
        "vit_t", "vit_t", "MobileSAM: TinyViT encoder distilled from SAM ViT-H (10M parameters)",
        "MobileSAM (Zhang et al. 2023), github.com/ChaoningZhang/MobileSAM", "Apache-2.0",
        url=f"https://github.com/ChaoningZhang/MobileSAM/raw/{_MOBILE_SAM_COMMIT}/weights/mobile_sam.pt",
        filename="mobile_sam.pt",
        known_hash="sha256:6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size=40728226,
    ),
    _micro_sam("vit_b_lm", "vit_b", "diplomatic-bug", "1.2", "fe9252a29f3f4ea53c15a06de471e186",
               "cells and nuclei in light microscopy", "708b15ac620e235f90bb38612c4929ba"),
    _micro_sam("vit_l_lm", "vit_l", "idealistic-rat", "1.2", "017f20677997d628426dec80a8018f9d",
               "cells and nuclei in light microscopy", "2faeafa03819dfe03e7c46a44aaac64a"),
    _micro_sam("vit_t_lm", "vit_t", "faithful-chicken", "1.1", "72ec5074774761a6e5c05a08942f981e",
               "cells and nuclei in light microscopy", "3e914a5f397b0312cdd36813031f8823"),
    _micro_sam("vit_b_em_organelles", "vit_b", "noisy-ox", "1.2", "f3bf2ed83d691456bae2c3f9a05fb438",
               "mitochondria, nuclei and other organelles in electron microscopy",
               "bb6398956a6b0132c26b631c14f95ce2"),
    _micro_sam("vit_l_em_organelles", "vit_l", "humorous-crab", "1.2", "810b084b6e51acdbf760a993d8619f2d",
               "mitochondria, nuclei and other organelles in electron microscopy",
               "334877640bfdaaabce533e3252a17294"),
    _micro_sam("vit_t_em_organelles", "vit_t", "greedy-whale", "1", "253474720c497cce605e57c9b1d18fd9",
               "mitochondria, nuclei and other organelles in electron microscopy",
               "8f897c7bb93174a4d1638827c4dd6f44"),
    _owncloud("vit_b_histopathology", "vit_b", "sBB4H8CTmIoBZsQ", "ffd1a2cd84570458b257bd95fdd8f974",
              "nuclei in histopathology (H&E) images", _PATHO_SAM,
              "KO9AWqynI7SFOBj", "6a66194dcb6e36199cbee2214ecf7213"),
    _owncloud("vit_l_histopathology", "vit_l", "IZgnn1cpBq2PHod", "b591833c89754271023e901281dee3f2",
              "nuclei in histopathology (H&E) images", _PATHO_SAM,
              "oIs6VSmkOp7XrKF", "46aab7765d4400e039772d5a50b55c04"),
    _owncloud("vit_h_histopathology", "vit_h", "L7AcvVz7DoWJ2RZ", "bd1856dafc156a43fb3aa705f1a6e92e",
              "nuclei in histopathology (H&E) images", _PATHO_SAM,
              "1qAKxy5H0jgwZvM", "3ed9f87e46ad5e16935bd8d722c8dc47"),
    _owncloud("vit_b_medical_imaging", "vit_b", "f5Ol4FrjPQWfjUF", "40169f1e3c03a4b67bff58249c176d92",
              "medical images (CT, MRI, X-ray, ultrasound, ...)", _MEDICO_SAM,
              "ahd3ZhZl2e0RIwz", "9e498b12f526f119b96c88be76e3b2ed"),
    *(
        ModelEntry(
            f"sam2.1_hiera_{size}", f"sam2.1_hiera_{size}",
            f"SAM 2.1, Hiera-{label} encoder ({params} parameters), with video memory",
            _META2, "Apache-2.0",
            url=f"{_SAM2_BASE}/sam2.1_hiera_{size}.pt",
            filename=f"sam2.1_hiera_{size}.pt",
            known_hash=f"sha256:{sha}",
            size=nbytes,
        )
        for size, label, params, sha, nbytes in (
            ("tiny", "T", "39M", "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156008466),
            ("small", "S", "46M", "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", None),
            ("base_plus", "B+", "81M", "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", None),
            ("large", "L", "224M", "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", None),
        )
    ),
    ModelEntry(
        "tiny", "tiny", "napari-sam's small bundled model (256 px input), for quick tries and tests",
        "napari-sam", "BSD-3-Clause", bundled=True, package_path="weights/tiny.pt", automatic=zoo_defaults("tiny"),
    ),
)

#: name -> entry. Tests and plugins may add entries (e.g. ``monkeypatch.setitem``).
REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}


def list_models(include_unavailable: bool = False, families: tuple[str, ...] = ("sam",)) -> list[ModelEntry]:
    """The zoo's entries of the given families, in registry order.

    By default the SAM 1 models (what ``SamPredictor`` and the widgets run); pass
    ``families=("sam", "sam2")`` for the SAM 2.1 checkpoints too. Bundled entries
    whose file is missing from this installation are left out unless
    ``include_unavailable`` is true.
    """
    return [e for e in REGISTRY.values() if e.family in families and (include_unavailable or e.available)]


DEFAULT_MODEL_ENV = "NAPARI_SAM_MODEL"


def default_model_name() -> str:
    """The model used when none is named (the one place that decides it).

    Returns:
        ``$NAPARI_SAM_MODEL`` if set; else ``"vit_b_lm"``, ``"vit_t_lm"`` or ``"vit_l_lm"`` (in that
        order) when that model and its instance decoder are already downloaded, complete and
        hash-verified (:func:`~napari_sam.engine.models.default_model.downloaded_default`; nothing is
        downloaded to decide); else the bundled ``"tiny"``.

    Raises:
        UnknownModelError: with what to do, when no model can be used without asking
            (no downloaded model and the bundled file is missing from this installation).
    """
    name = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    if name:
        return name
    downloaded = downloaded_default(REGISTRY)
    if downloaded is not None:
        return downloaded
    entry = REGISTRY.get(BUNDLED_DEFAULT)
    if entry is not None and entry.available:
        return BUNDLED_DEFAULT
    raise UnknownModelError(
        f"No model was named and the bundled {BUNDLED_DEFAULT!r} model is missing from this installation. "
        "Name a model (e.g. 'vit_b_lm', downloaded on first use) or a checkpoint file, "
        f"or set {DEFAULT_MODEL_ENV}."
    )


def find_entry(name: str) -> ModelEntry | None:
    """The registry entry called ``name`` (case-insensitive), or None."""
    entry = REGISTRY.get(name)
    if entry is None:
        entry = next((e for e in REGISTRY.values() if e.name.lower() == name.lower()), None)
    return entry


def _close_names(name: str) -> list[str]:
    import difflib

    names = {e.name.lower(): e.name for e in REGISTRY.values()}
    return [names[m] for m in difflib.get_close_matches(name.lower(), list(names), n=3, cutoff=0.6)]


def get_entry(name: str) -> ModelEntry:
    """The registry entry called ``name`` (case-insensitive); :class:`UnknownModelError`
    (with the closest names and the full list) if none."""
    entry = find_entry(name)
    if entry is not None:
        return entry
    close = _close_names(name)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(e.name for e in list_models(families=("sam", "sam2")))
    raise UnknownModelError(
        f"Unknown model {name!r}: it is neither a model of the zoo nor an existing file.{hint} "
        f"Known models: {known}."
    )


def check_model(name_or_path: str | os.PathLike | None) -> None:
    """Fail now, without loading anything, if :func:`load_model` could not find ``name_or_path``
    (None: the default model): an unknown name (with "did you mean"), a missing file, or a
    bundled model missing from this installation. Downloads are not attempted."""
    if name_or_path is None:
        name_or_path = default_model_name()
    entry = find_entry(name_or_path) if isinstance(name_or_path, str) else None
    if entry is not None:
        if entry.bundled and not entry.available:
            weights_path(entry.name)  # raises, saying what to do
        return
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return
    if path.exists():
        raise CheckpointError(f"Checkpoint {path} is a folder, not a file.")
    if isinstance(name_or_path, os.PathLike) or path.suffix or len(path.parts) > 1:
        raise CheckpointError(f"Checkpoint file not found: {path}")
    get_entry(str(name_or_path))  # raises UnknownModelError


def bundled_path(entry: ModelEntry) -> Path:
    """Where a bundled entry's file lives inside the installed package."""
    if not entry.package_path:
        raise CheckpointError(f"Model {entry.name!r} is marked bundled but has no package path.")
    return Path(str(importlib.resources.files("napari_sam").joinpath(entry.package_path)))


def weights_path(name: str, progressbar: bool = True) -> Path:
    """Local file of zoo model ``name``: the bundled file, or the cached download (fetched if needed)."""
    entry = get_entry(name)
    if entry.bundled:
        path = bundled_path(entry)
        if not path.is_file():
            raise CheckpointError(
                f"The bundled weights of {entry.name!r} are missing from this installation (expected {path}). "
                f"Reinstall napari-sam, or use another model: "
                f"{', '.join(e.name for e in list_models())}."
            )
        return path
    if not entry.url or not entry.filename:
        raise CheckpointError(f"Model {entry.name!r} has neither a URL nor bundled weights.")
    return weights_cache.fetch(entry.url, entry.filename, entry.known_hash, entry.size, progressbar=progressbar)


def _read_zoo_weights(entry: ModelEntry, progressbar: bool) -> dict:
    """Fetch and read a zoo model; a cached file that cannot be read is fetched once more."""
    path = weights_path(entry.name, progressbar=progressbar)
    try:
        return read_state_dict(path)
    except CheckpointError as first:
        if entry.bundled or weights_cache.is_offline():
            raise
        # Without a checkable hash, a damaged cached file is only noticed here.
        _log.warning("Cached weights %s could not be read (%s); fetching them again.", path, first)
        weights_cache.discard(path)
        path = weights_path(entry.name, progressbar=progressbar)
        return read_state_dict(path)


def _check_architecture(state: dict, model_type: str, source: str) -> None:
    """Fail early, naming the likely type, when the tensors are clearly of another known architecture."""
    from ...model import get_config, guess_model_type
    from ...model.config import ALIASES, PRESETS

    guess = guess_model_type(state)
    wanted = get_config(model_type).name
    if guess in PRESETS and guess != ALIASES.get(wanted, wanted):
        raise CheckpointError(
            f"{source} does not fit a {model_type!r} model: its tensors look like a {guess!r} checkpoint. "
            f"Load it with model_type={guess!r} (or leave model_type out to detect it)."
        )


def _build_sam2(state: dict, model_type: str | None, source: str, device, image_size: int | None = None):
    """A SAM 2.1 model from its tensors; a SAM 1 file or a mismatched size gets a CheckpointError."""
    from ...model.sam2 import build_sam2
    from .device import resolve_device

    try:
        return build_sam2(model_type, state, device=resolve_device(device), image_size=image_size)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from e


def _is_sam2_type(model_type: str | None) -> bool:
    from ...model.sam2.config import SAM2_ALIASES, SAM2_PRESETS

    return model_type is not None and (model_type in SAM2_PRESETS or model_type in SAM2_ALIASES)


def _build(state: dict, model_type: str, source: str, device):
    from ...model import build_sam
    from ...model.checkpoint import load_into
    from .device import resolve_device

    _check_architecture(state, model_type, source)
    model = build_sam(model_type, device=resolve_device(device))
    try:
        load_into(model, state, model_type)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from e
    return model


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device=None,
    *,
    model_type: str | None = None,
    progressbar: bool = True,
    with_decoder: bool = True,
    decoder: str | os.PathLike | None = None,
):
    """Load a SAM from a zoo name (downloaded and cached on first use) or a local file.

    Args:
        name_or_path: a name from :func:`list_models` (``"vit_b"``, ``"vit_b_lm"``,
            ...) or the path of a checkpoint file. A ``str`` equal to a zoo name
            means the zoo model; pass a ``Path`` to force a file. ``None``: the default
            model (:func:`default_model_name`).
        device: ``"cuda"``, ``"mps"``, ``"cpu"``, a ``torch.device``, or ``None``
            for the default (``NAPARI_SAM_DEVICE``, else CUDA, MPS, CPU).
        model_type: architecture of a local file; guessed from its tensors when
            left out. For zoo names it must agree with the entry.
        progressbar: show a tqdm bar while downloading.
        with_decoder: also fetch and attach the model's published instance decoder
            (zoo entries with one) or the decoder a checkpoint file carries
            (micro-sam's ``decoder_state``); ``False`` skips it.
        decoder: a decoder file to attach instead (e.g. a micro-sam ``*_decoder.pt``);
            it must fit the encoder's embedding width.

    Returns:
        A :class:`~napari_sam.model.Sam` in eval mode on the chosen device;
        ``model.instance_decoder`` is the attached decoder or ``None``; or a
        :class:`~napari_sam.model.sam2.SAM2Model` for a SAM 2.1 file or zoo entry. The precision
        it runs in is chosen where it runs (``SamPredictor``/``Segmenter``/... ``precision=``).

    Raises:
        UnknownModelError: neither a zoo name nor an existing file.
        DownloadError: the weights could not be fetched (offline, network, bad hash).
        CheckpointError: the file is missing, truncated, unsafe, or of another model type.
    """
    if name_or_path is None:
        name_or_path = default_model_name()
    entry = find_entry(name_or_path) if isinstance(name_or_path, str) else None
    if entry is not None:
        arch = entry.architecture
        if model_type is not None and model_type != arch:
            raise CheckpointError(f"Zoo model {entry.name!r} is a {arch!r} model, not {model_type!r}.")
        state = _read_zoo_weights(entry, progressbar)
        if _is_sam2_type(arch):
            return _build_sam2(state, arch, f"Zoo model {entry.name!r}", device)
        model = _build(state, arch, f"Zoo model {entry.name!r}", device)
        if decoder is not None:
            instance_decoders.load_local_decoder(decoder, model)
        elif with_decoder and entry.decoder is not None:
            instance_decoders.load_zoo_decoder(entry, model, progressbar)
        elif with_decoder and entry.bundled:  # a bundled file may hold its decoder too (instance_decoder.* keys)
            from ...model.checkpoint import load_weights_only

            path = weights_path(entry.name, progressbar=False)
            instance_decoders.attach_embedded(load_weights_only(path), model, f"Bundled model {entry.name!r} ({path})")
        return model

    check_model(name_or_path)  # a missing file or an unknown name (with "did you mean")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    from ...model.checkpoint import load_weights_only, unwrap_state_dict

    raw = load_weights_only(path)
    state = unwrap_state_dict(raw, source=f"Checkpoint {path}")
    from ...model.sam2 import is_sam2_state_dict

    if _is_sam2_type(model_type) or (model_type is None and is_sam2_state_dict(state)):
        from ...model.sam2.build import recorded_image_size

        source = f"Checkpoint {path}"
        return _build_sam2(state, model_type, source, device, recorded_image_size(raw, source))
    if model_type is None:
        from ...model import guess_model_type

        model_type = guess_model_type(state)
        if model_type.startswith("unknown"):
            raise CheckpointError(
                f"Cannot tell which SAM architecture {path} holds ({model_type}); pass model_type= "
                f"(vit_b, vit_l, vit_h, vit_t or tiny)."
            )
    model = _build(state, model_type, f"Checkpoint {path}", device)
    if decoder is not None:
        instance_decoders.load_local_decoder(decoder, model)
    elif with_decoder:
        instance_decoders.attach_embedded(raw, model, f"Checkpoint {path}")
    return model


def decoder_models() -> list[str]:
    """Names of the zoo models that come with a trained instance decoder (automatic segmentation)."""
    return [e.name for e in list_models() if e.decoder is not None or e.bundled_decoder]


__all__ = ["DEFAULT_MODEL_ENV", "REGISTRY", "DecoderFile", "ModelEntry", "check_model", "decoder_models",
           "default_model_name", "find_entry", "get_entry", "list_models", "load_model", "weights_path"]
