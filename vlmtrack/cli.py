"""Thin command line: parses arguments and calls the factories in order; holds no logic."""
from __future__ import annotations

import argparse
import sys

from vlmtrack.config import ConfigError
from vlmtrack.data.llava import DataError


def _build_demo(args) -> None:
    from vlmtrack.demo.assets import ensure_demo_assets

    assets = ensure_demo_assets()
    print(f"data:   {assets.data_path}\nimages: {assets.image_folder}\nllm:    {assets.llm}\nvision: {assets.vision}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmtrack", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("build-demo", help="build (once) the embedded demo dataset and model bundle")
    demo.set_defaults(func=_build_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError) as e:
        print(f"vlmtrack: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
