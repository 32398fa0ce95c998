"""`inferator probe`: the health probe of a multi-node group's pods, one template for all ranks.

Every pod of a group runs from the same pod template, but only the leader (rank 0) serves HTTP:
vLLM's workers run headless, SGLang's serve no API. So the probe is an exec command: the
leader's is its engine's health endpoint, a worker's is its process being alive (the
container runs), and a worker whose leader is gone is restarted with its whole group by the
operator, not by this probe. Standard library only: it runs every few seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request

# profiles.engines.RANK_ENV and LWS_RANK_ENV, repeated: importing them would load pydantic on
# every probe (tests/unit/test_multi_node.py checks they agree).
RANK_ENV = "INFERATOR_NODE_RANK"
LWS_RANK_ENV = "LWS_WORKER_INDEX"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="inferator probe", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    if (os.environ.get(RANK_ENV) or os.environ.get(LWS_RANK_ENV) or "0") != "0":
        return 0
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{args.port}{args.path}", timeout=args.timeout
        ) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"inferator probe: {args.path}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
