"""`inferator crds`: regenerate crds/ and the chart's copy from the models."""

from __future__ import annotations

import argparse
from pathlib import Path

from inferator.api.crds import render_all, write_all


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="inferator crds", description=__doc__)
    parser.add_argument("--out", action="append", type=Path, help="directory to write (repeatable)")
    parser.add_argument("--stdout", action="store_true", help="print all CRDs as one YAML stream")
    args = parser.parse_args(argv)
    if args.stdout:
        print("---\n".join(render_all().values()), end="")
        return 0
    for path in write_all(args.out or [Path("crds"), Path("charts/inferator/crds")]):
        print(f"wrote {path}")
    return 0
