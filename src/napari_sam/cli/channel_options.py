"""The ``--axes`` / ``--channel`` options shared by ``segment``, ``predict`` and ``embed``."""

from __future__ import annotations

import argparse


def channel_choice(text: str):
    """``"1"`` -> 1, ``"0,2"`` -> [0, 2] (their mean), ``"mean"`` -> ``"mean"`` (all channels)."""
    text = text.strip()
    if text.lower() in ("mean", "all"):
        return "mean"
    try:
        picks = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a channel index, indices like 0,2, or 'mean'; got {text!r}")
    return picks[0] if len(picks) == 1 else picks


def add_channel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axes", default=None, metavar="AXES",
                   help="axis letters of the input, e.g. ZYX, CZYX, YXC (default: the file's metadata, else the "
                        "shape where it is unambiguous)")
    p.add_argument("--channel", type=channel_choice, default=None, metavar="K",
                   help="for multichannel input: the channel SAM sees (index), several to average (0,2), or "
                        "'mean' for all (default: required when there are several channels)")
