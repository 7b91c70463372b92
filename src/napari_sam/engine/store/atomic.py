"""Atomic file writes: write beside the target, then rename over it.

The temporary file is created private (mode 0600, by :func:`tempfile.mkstemp`);
before it is renamed into place it gets the mode a plain ``open()`` would have
given: 0666 masked by the process umask (so results on shared storage are as
readable as the user's other files).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits a newly created regular file gets: 0666 minus the umask."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path in the target's folder; on success rename it to ``target``.

    The target's folder must exist (a missing folder is a mistyped path more often
    than a wish to create one). The file gets the umask's mode (see the module
    docstring). On error the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"The output folder {target.parent} does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(target: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``target`` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)
