"""Every option of every CLI command has help text, and its help shows the default."""

from __future__ import annotations

import argparse

import pytest

from napari_sam.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_has_help_and_shows_its_default(name):
    command = _commands()[name]
    for action in command._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        what = action.option_strings or [action.dest]
        assert action.help and action.help.strip(), f"{name} {what[0]}: no help text"
        if action.option_strings and not action.required:
            entry = " ".join(command._get_formatter()._format_action(action).split())
            assert "default" in entry.lower(), f"{name} {what[0]}: help does not show the default: {entry!r}"


def test_defaults_are_rendered_from_the_parser():
    segment = _commands()["segment"]
    text = " ".join(segment.format_help().split())
    assert "(default: 32)" in text and "(default: off)" in text
    assert text.count("default: the model's") >= 5  # thresholds: the model's own unless given
    assert "--out OUT output labels: .tif/.tiff or .zarr (default" not in text  # a required option has no default
