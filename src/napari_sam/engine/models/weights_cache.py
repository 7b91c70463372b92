"""The per-user folder of downloaded weights, and fetching files into it with pooch.

- Folder: ``platformdirs.user_cache_dir("napari-sam")/models``; the environment
  variable ``NAPARI_SAM_CACHE_DIR`` replaces the base folder (weights then go
  under ``$NAPARI_SAM_CACHE_DIR/models``).
- ``NAPARI_SAM_OFFLINE=1`` forbids any network access: a file that is not
  already cached (and intact) raises :class:`DownloadError` naming the URL, the
  file name and the folder to put it in.
- Downloads go through pooch (temporary file, hash check, then an atomic move),
  with a tqdm progress bar. A cached file whose size or hash is wrong (for
  instance truncated) is deleted and fetched again.
- A hash is checked once per file version: a small ``<file>.verified`` note
  records size, modification time and hash, so multi-GB checkpoints are not
  re-hashed on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ...errors import DownloadError

CACHE_ENV = "NAPARI_SAM_CACHE_DIR"
OFFLINE_ENV = "NAPARI_SAM_OFFLINE"
#: Seconds without data before a download is abandoned.
TIMEOUT_S = 60

_log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Folder where downloaded weights live (not created here)."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        import platformdirs

        base = platformdirs.user_cache_dir("napari-sam")
    return Path(base).expanduser() / "models"


def is_offline() -> bool:
    """True when ``NAPARI_SAM_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def hash_algorithm(known_hash: str) -> str:
    """The algorithm of a pooch-style hash string (``"alg:hex"``; bare hex means sha256)."""
    return known_hash.split(":", 1)[0].lower() if ":" in known_hash else "sha256"


def hash_is_checkable(known_hash: str | None) -> bool:
    """Whether this machine can compute ``known_hash``'s algorithm (xxh* need the xxhash package)."""
    if known_hash is None:
        return False
    alg = hash_algorithm(known_hash)
    if alg.startswith("xxh"):
        try:
            import xxhash  # noqa: F401
        except ImportError:
            return False
        return True
    return alg in hashlib.algorithms_available


def _file_hash(path: Path, alg: str) -> str:
    import pooch

    return pooch.file_hash(str(path), alg=alg)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _read_marker(path: Path, known_hash: str) -> bool:
    try:
        note = json.loads(_marker(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return note == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": known_hash}


def _write_marker(path: Path, known_hash: str) -> None:
    st = path.stat()
    try:
        note = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": known_hash}
        _marker(path).write_text(json.dumps(note))
    except OSError:  # a read-only cache still works, it is just re-hashed next time
        pass


def discard(path: Path) -> None:
    """Delete a cached file and its verification note (missing files are fine)."""
    for p in (path, _marker(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def cached_file_problem(path: Path, known_hash: str | None, size: int | None) -> str | None:
    """Why the cached ``path`` cannot be trusted (``None`` when it is fine or unverifiable)."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"it has {actual} bytes instead of {size}"
    if hash_is_checkable(known_hash) and not _read_marker(path, known_hash):
        alg = hash_algorithm(known_hash)
        expected = known_hash.split(":", 1)[-1].lower()
        got = _file_hash(path, alg)
        if got.lower() != expected:
            return f"its {alg} hash is {got}, expected {expected}"
        _write_marker(path, known_hash)
    return None


def _offline_message(url: str, fname: str, folder: Path, why: str) -> str:
    return (
        f"{why} Download {url} and save it as '{fname}' in the folder {folder} "
        f"(or unset {OFFLINE_ENV} / check the network connection and try again)."
    )


def fetch(
    url: str, fname: str, known_hash: str | None = None, size: int | None = None, progressbar: bool = True
) -> Path:
    """Return the local path of ``fname`` in the cache, downloading it from ``url`` if needed.

    ``known_hash`` is a pooch hash string (``"sha256:..."``, ``"md5:..."``,
    ``"xxh128:..."``) or ``None``; a hash whose algorithm is unavailable here is
    skipped (logged). ``size`` in bytes, when known, is checked too.

    Raises :class:`DownloadError` when offline and the file is absent, on
    network failure, or when the downloaded file fails verification.
    """
    folder = cache_dir()
    path = folder / fname
    if path.is_file():
        problem = cached_file_problem(path, known_hash, size)
        if problem is None:
            return path
        _log.warning("Cached weights %s are damaged (%s); fetching them again.", path, problem)
        discard(path)
        if is_offline():
            raise DownloadError(
                _offline_message(url, fname, folder, f"The cached file {path} was damaged ({problem}) and was removed; "
                                 f"network access is disabled ({OFFLINE_ENV}=1).")
            )
    elif is_offline():
        raise DownloadError(
            _offline_message(url, fname, folder, f"Model weights '{fname}' are not in the cache and network access "
                             f"is disabled ({OFFLINE_ENV}=1).")
        )

    checked_hash = known_hash if hash_is_checkable(known_hash) else None
    if known_hash is not None and checked_hash is None:
        _log.warning(
            "Cannot check %s of %s here (install 'xxhash' for xxh* hashes); relying on a strict load instead.",
            hash_algorithm(known_hash), fname,
        )
    import pooch
    import requests

    try:
        folder.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(
            url,
            known_hash=checked_hash,
            fname=fname,
            path=folder,
            downloader=pooch.HTTPDownloader(progressbar=progressbar, timeout=TIMEOUT_S),
        )
    except ValueError as e:  # pooch: hash mismatch of the downloaded file (already deleted)
        raise DownloadError(
            f"The file downloaded from {url} failed verification and was discarded: {e} "
            f"The server may be serving a different file; you can download it yourself, check it, "
            f"and save it as '{fname}' in {folder}."
        ) from e
    except (requests.exceptions.RequestException, OSError) as e:
        raise DownloadError(
            _offline_message(url, fname, folder, f"Could not download model weights '{fname}' "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).")
        ) from e
    if size is not None and path.stat().st_size != size:
        actual = path.stat().st_size
        discard(path)
        raise DownloadError(
            f"The file downloaded from {url} has {actual} bytes instead of {size} and was discarded "
            f"(interrupted transfer?). Try again, or save it yourself as '{fname}' in {folder}."
        )
    if checked_hash is not None:
        _write_marker(path, checked_hash)
    return path
