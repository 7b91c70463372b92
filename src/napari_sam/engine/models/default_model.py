"""Which downloaded model may become the default (:func:`napari_sam.engine.models.zoo.default_model_name`).

The default model, in this order:

1. ``$NAPARI_SAM_MODEL``, when set (any zoo name or checkpoint path);
2. else a light-microscopy model of micro-sam that the user has already downloaded
   **with its instance decoder**, both files complete and hash-verified in the local
   cache (:mod:`.weights_cache`), tried in the order of :data:`DOWNLOADED_PREFERENCE`:
   ``vit_b_lm`` (micro-sam's own recommendation), then ``vit_t_lm`` (smaller and faster),
   then ``vit_l_lm`` (largest and slowest on a CPU);
3. else the bundled ``tiny``, which works offline.

Nothing is ever downloaded to decide. A cached file that is damaged or half-written
(wrong size or hash) is not chosen: the default stays ``tiny`` and a warning names the
file; the cached file is left as it is (loading that model by name fetches it again).
The user can always override: the env variable, ``--model`` on the command line, the
widgets' model list, or a name given to ``load_model``/``Segmenter``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from . import weights_cache

#: the downloaded models that may become the default, most preferred first.
DOWNLOADED_PREFERENCE = ("vit_b_lm", "vit_t_lm", "vit_l_lm")
BUNDLED_DEFAULT = "tiny"

_log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()


def _cached_problem(path: Path, known_hash: str | None, size: int | None) -> str | None:
    """Why the cached ``path`` cannot serve as the default ('missing' when absent), or None when verified."""
    if not path.is_file():
        return "missing"
    if not weights_cache.hash_is_checkable(known_hash):
        return f"its {known_hash or 'hash'} cannot be checked here (install 'xxhash')"
    try:
        return weights_cache.cached_file_problem(path, known_hash, size)
    except OSError as e:
        return f"it cannot be read ({e})"


def _downloaded_problem(entry) -> tuple[Path, str] | None:
    """None when ``entry``'s encoder and decoder are both cached and verified, else (file, why)."""
    folder = weights_cache.cache_dir()
    files = [(entry.filename, entry.known_hash, entry.size)]
    files.append((entry.decoder.filename, entry.decoder.known_hash, entry.decoder.size))
    for filename, known_hash, size in files:
        path = folder / filename
        problem = _cached_problem(path, known_hash, size)
        if problem is not None:
            return path, problem
    return None


def downloaded_default(registry: Mapping) -> str | None:
    """The first model of :data:`DOWNLOADED_PREFERENCE` whose encoder and instance decoder are
    both in the cache, complete and hash-verified; None when there is none. Never downloads.

    ``registry`` maps zoo names to :class:`~napari_sam.engine.models.zoo.ModelEntry` (the zoo's
    ``REGISTRY``). A file that is present but fails verification is logged once (warning) and skipped.
    """
    damaged: list[tuple[str, Path, str]] = []
    chosen = None
    for name in DOWNLOADED_PREFERENCE:
        entry = registry.get(name)
        if entry is None or entry.bundled or not entry.filename or entry.decoder is None:
            continue
        found = _downloaded_problem(entry)
        if found is None:
            chosen = name
            break
        if found[1] != "missing":
            damaged.append((name, *found))
    instead = f"{chosen!r} is used instead" if chosen else (
        f"the bundled {BUNDLED_DEFAULT!r} is used instead, and nothing is wrong with it")
    for name, path, problem in damaged:
        if (str(path), problem) not in _warned:
            _warned.add((str(path), problem))
            _log.warning("The cached %r weights %s cannot be trusted (%s), so they are not the default model; %s. "
                         "Choosing %r by name fetches the file again.", name, path, problem, instead, name)
    return chosen


__all__ = ["BUNDLED_DEFAULT", "DOWNLOADED_PREFERENCE", "downloaded_default"]
