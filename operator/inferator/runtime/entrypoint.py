"""`inferator runtime`: the serving container's command. Assert the profile, then become the engine.

Reads the ServingProfile from INFERATOR_PROFILE (JSON), checks the GPUs it landed on (NVML,
skipped for profiles that need none) and the model cache under INFERATOR_MODEL_DIR, logs one
line saying what it checked, and `exec`s the profile's command unchanged: the engine keeps
this pid, so the kubelet's SIGTERM reaches it and its exit code is the container's.

On a mismatch it refuses to start: a one-line reason goes to stderr and to the termination
log (INFERATOR_TERMINATION_LOG, default /dev/termination-log, written only when it exists or
the variable names it), where the kubelet picks it up for the operator to surface in status.

Exit codes of a refusal (anything else is the engine's own):
    10  INFERATOR_PROFILE missing or not a valid ServingProfile
    11  the profile needs GPUs and NVML is unusable (no driver on the node, no nvidia-ml-py)
    12  the GPUs do not match the profile (count, product, total or free memory)
    13  the model cache is incomplete (manifest missing or unreadable, a file missing or short)
    126 the engine's command is not executable; 127 it was not found (as in a shell)

`--check-only` runs the checks, prints the verdict and exits (0 or the code above) without
writing the termination log or starting the engine: for `kubectl exec` and `kubectl debug`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from inferator.api.profile import (
    API_KEY_ENV,
    CACHE_CHECK_ENV,
    DEFAULT_MODEL_DIR,
    MODEL_DIR_ENV,
    PROFILE_ENV,
    TERMINATION_LOG_ENV,
    ServingProfile,
)
from inferator.profiles.engines import LEADER_ENV, LWS_LEADER_ENV, LWS_RANK_ENV, RANK_ENV, rank_args
from inferator.runtime import gpus as gpu_detection
from inferator.runtime.checks import (
    check_cache,
    check_cache_in_place,
    check_gpus,
    describe_gpu,
    engine_environment,
    gib,
)

EXIT_PROFILE_INVALID = 10
EXIT_NO_NVML = 11
EXIT_GPU_MISMATCH = 12
EXIT_CACHE_INCOMPLETE = 13
EXIT_GROUP_INVALID = 14
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_MAX_BYTES = 4000


class Refusal(Exception):
    """The container must not start the engine: `reason` is one line, `code` the exit status."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = " ".join(reason.split())


def load_profile(environ: Mapping[str, str]) -> ServingProfile:
    text = environ.get(PROFILE_ENV)
    if not text:
        raise Refusal(
            EXIT_PROFILE_INVALID,
            f"{PROFILE_ENV} is not set: the operator sets it on the serving Deployment, with the "
            "ServingProfile as JSON; `inferator runtime` runs only as a serving container's command",
        )
    try:
        profile = ServingProfile.model_validate_json(text)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'profile'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise Refusal(EXIT_PROFILE_INVALID, f"{PROFILE_ENV} is not a valid ServingProfile: {errors}") from exc
    if not profile.command:
        raise Refusal(EXIT_PROFILE_INVALID, f"{PROFILE_ENV}: profile {profile.name} has an empty command")
    return profile


def assert_gpus(profile: ServingProfile) -> str:
    """Check the GPUs against the profile; return the log fragment, or raise Refusal."""
    if profile.gpu_count == 0:
        return f"GPUs: none needed ({profile.engine}), NVML not consulted"
    try:
        seen = gpu_detection.detect_gpus()
    except gpu_detection.NvmlUnavailable as exc:
        raise Refusal(
            EXIT_NO_NVML, f"profile {profile.name} needs {profile.gpu_count} GPU(s): {exc}"
        ) from exc
    verdict = check_gpus(profile, seen)
    if verdict.problems:
        raise Refusal(EXIT_GPU_MISMATCH, "; ".join(verdict.problems))
    used = ",".join(str(g.index) for g in verdict.used)
    unused = f", {len(verdict.unused)} more visible and unused" if verdict.unused else ""
    return f"GPUs seen: [{'; '.join(describe_gpu(g) for g in seen)}]; using {used}{unused}"


def assert_group(profile: ServingProfile, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """This pod's share of a multi-node profile: its rank in the group and the leader's address
    (set by the operator's StatefulSet), turned into the engine's rank arguments."""
    if profile.nodes <= 1:
        return "", []
    # The operator's StatefulSet sets ours; a LeaderWorkerSet sets its own.
    raw = environ.get(RANK_ENV) or environ.get(LWS_RANK_ENV, "")
    leader = environ.get(LEADER_ENV) or environ.get(LWS_LEADER_ENV, "")
    if not raw.isdigit() or not 0 <= int(raw) < profile.nodes:
        raise Refusal(EXIT_GROUP_INVALID, f"profile {profile.name} spans {profile.nodes} nodes: {RANK_ENV}={raw!r} "
                      f"is not a rank from 0 to {profile.nodes - 1}")  # fmt: skip
    if not leader:
        raise Refusal(
            EXIT_GROUP_INVALID, f"profile {profile.name} spans {profile.nodes} nodes: {LEADER_ENV} is not set"
        )
    rank = int(raw)
    role = "leader" if rank == 0 else "worker"
    line = f"group: {role}, rank {rank} of {profile.nodes} nodes, leader {leader}"
    return line, rank_args(profile.engine, rank, leader)


def assert_cache(model_dir: Path, in_place: bool = False) -> str:
    """Check the cache is complete; return the log fragment, or raise Refusal."""
    if in_place:
        files, total, problems = check_cache_in_place(model_dir)
        if problems:
            raise Refusal(EXIT_CACHE_INCOMPLETE, "; ".join(problems))
        return f"cache {model_dir} (pvc://, checked in place): {files} files, {gib(total)}, complete"
    verdict = check_cache(model_dir)
    if verdict.problems or verdict.manifest is None:
        raise Refusal(EXIT_CACHE_INCOMPLETE, "; ".join(verdict.problems))
    manifest = verdict.manifest
    return f"cache {model_dir}: {len(manifest.files)} files, {gib(manifest.total_bytes)}, complete"


def write_termination_log(reason: str, environ: Mapping[str, str]) -> None:
    """Leave the reason where the kubelet reads it; outside a pod the default path does not exist."""
    path = Path(environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
    if TERMINATION_LOG_ENV not in environ and not path.exists():
        return
    message = " ".join(reason.split()).encode()[:TERMINATION_MESSAGE_MAX_BYTES].decode(errors="ignore")
    try:
        path.write_text(message + "\n")
    except OSError as exc:
        print(f"inferator runtime: could not write the termination log {path}: {exc}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferator runtime",
        description="Serving container entrypoint: assert the profile against the GPUs and the cache, "
        "then exec the engine.",
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="run the checks and print the verdict; do not start the engine or write the termination log",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    environ = os.environ
    what = "refusing to start"
    try:
        profile = load_profile(environ)
        what = f"refusing to start profile {profile.name}"
        gpus_line = assert_gpus(profile)
        group_line, group_args = assert_group(profile, environ)
        if group_line:
            gpus_line = f"{gpus_line}; {group_line}"
        cache_line = assert_cache(
            Path(environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR), environ.get(CACHE_CHECK_ENV) == "in-place"
        )
    except Refusal as refusal:
        print(f"inferator runtime: {what}: {refusal.reason}", file=sys.stderr)
        if not args.check_only:
            write_termination_log(refusal.reason, environ)
        return refusal.code
    command = [*profile.command, *group_args]
    action = "check only, not starting the engine" if args.check_only else f"exec {shlex.join(command)}"
    print(
        f"inferator runtime: profile {profile.name} ({profile.engine}, tp{profile.tensor_parallel_size}) "
        f"checked: {gpus_line}; {cache_line}; " + action.replace("\n", "\\n"),
        flush=True,
    )
    if args.check_only:
        return 0
    if profile.engine == "sglang" and environ.get(API_KEY_ENV):
        # SGLang reads the key only from its argv; added after the line above, so never printed.
        command = [*command, "--api-key", environ[API_KEY_ENV]]
    sys.stderr.flush()
    try:
        # The profile's argv, unchanged and without a shell: the point is to become the engine.
        os.execvpe(command[0], command, engine_environment(profile, environ))  # noqa: S606
    except OSError as exc:
        code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
        where = f" on PATH={environ.get('PATH', '')}" if "/" not in command[0] else ""
        reason = (
            f"profile {profile.name}: cannot start the engine {command[0]!r}{where}: {exc.strerror or exc}"
        )
        print(f"inferator runtime: {reason}", file=sys.stderr)
        write_termination_log(reason, environ)
        return code
    return 0  # not reached: execvpe returns only by raising
