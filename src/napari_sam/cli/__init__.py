"""The ``napari-sam`` command line: one sub-command per module in this package.

Each sub-command module defines ``add_parser(subparsers)`` (returning the
parser) and ``run(args) -> int``. Modules are imported only when listed here,
and heavy imports (torch, zarr) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module (inside napari_sam.cli)
SUBCOMMANDS = {
    "predict": "predict",
    "models": "models",
    "embed": "embed",
    "segment": "segment",
    "track": "track",
    "train": "train",
    "sample": "sample",
}


def _available() -> dict[str, object]:
    mods = {}
    for name, modname in SUBCOMMANDS.items():
        try:
            mods[name] = importlib.import_module(f"{__name__}.{modname}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{modname}":
                raise
    return mods


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that states every option's default: ``(default: X)`` unless the text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        if isinstance(action.default, bool) and action.nargs == 0:
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam", description="Segment Anything for microscopy.",
                                     formatter_class=DefaultsHelpFormatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"napari-sam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, mod in _available().items():
        p = mod.add_parser(sub)
        p.formatter_class = DefaultsHelpFormatter
        p.set_defaults(_run=mod.run)
    return parser


#: set to 1 to see the Python traceback of an unexpected error
DEBUG_ENV = "NAPARI_SAM_DEBUG"


def _one_line(message: object) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command. Exit status: 0 done, 2 a usage or input error, 3 a batch write error
    (``segment``), 1 any other failure, 130 interrupted; every error is one line on stderr."""
    import os

    from ..errors import NapariSamError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except NapariSamError as e:
        print(f"napari-sam: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-sam: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as e:  # disk full, permissions, out of memory: the message is the story
        print(f"napari-sam: error: {_one_line(e) or type(e).__name__}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"napari-sam: unexpected error: {type(e).__name__}: {_one_line(e)} "
              f"(set {DEBUG_ENV}=1 to see where it came from)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
