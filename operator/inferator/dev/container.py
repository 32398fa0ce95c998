"""Start one container's process for the runner node: mounts, identity, then exec.

Runs as root inside a private mount namespace (`unshare -m`, set up by the runner), so bind
mounts are visible to this process tree only. Input is one JSON file (argv[1]):
  {"mounts": [[host_path, container_path, read_only]], "uid": int|null, "gid": int|null,
   "groups": [int], "cwd": str|null, "argv": [...], "env": {...}}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _bind(host: str, target: str, read_only: bool) -> None:
    target_path = Path(target)
    if Path(host).is_dir():
        target_path.mkdir(parents=True, exist_ok=True)
    else:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.touch(exist_ok=True)
    subprocess.run(["mount", "--bind", host, target], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    for host, target, read_only in spec["mounts"]:
        _bind(host, target, read_only)
    if spec.get("gid") is not None:
        os.setgroups(spec.get("groups") or [])
        os.setgid(spec["gid"])
    if spec.get("uid") is not None:
        os.setuid(spec["uid"])
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])  # noqa: S606 (exec is the point: the pid is the container's)
    except OSError as exc:
        message = f"runner: cannot start {argv[0]!r}: {exc}"
        print(message, file=sys.stderr)
        term = spec["env"].get("INFERATOR_RUNNER_TERMINATION_LOG")
        if term:
            Path(term).write_text(message)
        sys.exit(128)


if __name__ == "__main__":
    main()
