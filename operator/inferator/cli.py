"""`inferator` command line: one entry point, each subcommand owned by the module it drives.

Subcommands parse their own arguments, so the operator image, the prefetch Job and the
serving container each import only what they need (the runtime never imports kopf).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, help). Each module has `main(argv: list[str]) -> int | None`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("inferator.controllers.main", "run the operator (kopf)"),
    "crds": ("inferator.api.cli", "write the CRDs generated from the API models"),
    "plan": ("inferator.profiles.plan", "which profile would a model get on these nodes? (offline)"),
    "prefetch": ("inferator.prefetch.main", "download a model into a cache directory (the prefetch Job)"),
    "runtime": (
        "inferator.runtime.entrypoint",
        "serving container entrypoint: assert the profile, exec the engine",
    ),
    "warmup": ("inferator.runtime.warmup", "in a serving container: list the model and generate one token"),
    "probe": (
        "inferator.runtime.probe",
        "health probe of a multi-node group's pod (the leader's endpoint; workers: alive)",
    ),
    "validate": (
        "inferator.runtime.validate",
        "the validation Job: load-test one serving pod (vllm bench serve)",
    ),
    "gateway": ("inferator.gateway.main", "the InferenceGateway's server: keys, quotas, audit, hold at zero"),
    "dev": ("inferator.dev.cli", "local control plane with simulated GPU nodes: build, up, demo, down"),
}


def _usage() -> str:
    lines = ["usage: inferator <command> [args...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("--version", "version"):
        from inferator import __version__

        print(__version__)
        return 0
    if args[0] not in SUBCOMMANDS:
        print(f"inferator: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    result = module.main(args[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
