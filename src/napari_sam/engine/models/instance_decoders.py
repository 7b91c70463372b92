"""Instance decoders of the zoo: fetch a model's published decoder, check it, attach it.

A zoo entry with a :class:`~napari_sam.engine.models.zoo.DecoderFile` has a
trained instance decoder (micro-sam's ``*_decoder`` files). ``load_model``
fetches it beside the encoder (same cache, hash-verified download), loads it
weights-only with a strict key check, checks that it fits the encoder's
embedding width, and attaches it as ``model.instance_decoder``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ...errors import CheckpointError, DownloadError
from . import weights_cache

_log = logging.getLogger(__name__)


def embed_dim_of(model) -> int:
    """Channels of the model's image embedding (what a decoder must read)."""
    return int(model.prompt_encoder.embed_dim)


def attach(model, decoder) -> None:
    """Attach ``decoder`` to ``model`` (on the model's device, in eval mode)."""
    model.instance_decoder = decoder.to(model.device).eval()


def decoder_path(entry, progressbar: bool = True) -> Path:
    """Local file of ``entry``'s decoder (downloaded and hash-checked on first use)."""
    d = entry.decoder
    if d is None:
        raise CheckpointError(f"Zoo model {entry.name!r} has no published instance decoder.")
    try:
        return weights_cache.fetch(d.url, d.filename, d.known_hash, d.size, progressbar=progressbar)
    except DownloadError as e:
        raise DownloadError(
            f"The instance decoder of {entry.name!r} could not be fetched: {e} "
            f"(load the model with with_decoder=False to use it for prompts only)."
        ) from e


def load_zoo_decoder(entry, model, progressbar: bool = True) -> None:
    """Fetch, check and attach ``entry``'s decoder; a cached file that cannot be read is fetched once more."""
    from ...model.instance_decoder import read_instance_decoder

    path = decoder_path(entry, progressbar)
    try:
        decoder = read_instance_decoder(path, embed_dim=embed_dim_of(model))
    except CheckpointError as first:
        if weights_cache.is_offline() or "belongs to another model" in str(first):
            raise
        _log.warning("Cached decoder %s could not be read (%s); fetching it again.", path, first)
        weights_cache.discard(path)
        decoder = read_instance_decoder(decoder_path(entry, progressbar), embed_dim=embed_dim_of(model))
    attach(model, decoder)


def load_local_decoder(path: str | os.PathLike, model) -> None:
    """Load a decoder file (bare decoder state dict or a checkpoint holding one) and attach it."""
    from ...model.instance_decoder import read_instance_decoder

    attach(model, read_instance_decoder(Path(path).expanduser(), embed_dim=embed_dim_of(model)))


def attach_embedded(raw: object, model, source: str) -> None:
    """Attach the decoder a loaded model checkpoint carries (if any)."""
    from ...model.instance_decoder import build_instance_decoder, embedded_decoder_state

    state = embedded_decoder_state(raw)
    if state is not None:
        try:
            decoder = build_instance_decoder(state, embed_dim_of(model), f"{source} (its decoder_state)")
        except CheckpointError as e:
            raise CheckpointError(f"{e}\nLoad it with with_decoder=False to use the model without it.") from e
        attach(model, decoder)


__all__ = ["attach", "attach_embedded", "decoder_path", "load_local_decoder", "load_zoo_decoder"]
