"""``napari-sam models``: list the model zoo, or fetch a model ahead of time."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the model zoo or download a model ahead of time")
    p.add_argument("--fetch", metavar="NAME", help="download (and verify) this model into the cache")
    p.add_argument("--all", action="store_true", help="also list entries unavailable in this installation")
    return p


def run(args: argparse.Namespace) -> int:
    from ..engine.models import weights_cache
    from ..engine.models import zoo

    if args.fetch:
        path = zoo.weights_path(args.fetch, progressbar=True)
        print(path)
        return 0
    print(f"cache folder: {weights_cache.cache_dir()}")
    print(f"{'name':24s} {'arch':18s} {'decoder':8s} description  [source]")
    for e in zoo.list_models(include_unavailable=args.all, families=("sam", "sam2")):
        where = "bundled" if e.bundled else (e.url or "")
        decoder = "yes" if e.decoder is not None else "-"
        print(f"{e.name:24s} {e.architecture:18s} {decoder:8s} {e.description}  [{where}]")
    print(
        "decoder 'yes': the model comes with a trained instance decoder (fetched with it) and segments "
        "automatically in one pass; the others segment automatically with grid prompts."
    )
    return 0
