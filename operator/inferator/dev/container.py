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


def _bind(source_fd: int, is_dir: bool, target: str, read_only: bool) -> None:
    """Bind an already-open source at `target`. --no-canonicalize: mount(8) would otherwise resolve
    /proc/self/fd/N back to a path string, which an earlier mount may now hide."""
    target_path = Path(target)
    if is_dir:
        target_path.mkdir(parents=True, exist_ok=True)
    else:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.touch(exist_ok=True)
    subprocess.run(
        ["mount", "--no-canonicalize", "--bind", f"/proc/self/fd/{source_fd}", target],
        check=True,
        pass_fds=[source_fd],
    )
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)


def _expose(paths: list[str]) -> None:
    """Make an "image" path readable by any UID, as in a container image.

    The interpreter of the virtualenv that plays the image may live below a private directory
    (pyenv under /root, mode 700). Inside this mount namespace only, a world-readable tmpfs
    covers that directory and the interpreter's prefix is bound back at its own path.
    """
    for path in paths:
        blocked = next(
            (p for p in reversed(Path(path).parents) if p != Path("/") and not os.stat(p).st_mode & 0o001),
            None,
        )
        if blocked is None:
            continue
        fd = os.open(path, os.O_PATH)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(blocked)], check=True)
        Path(path).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "--no-canonicalize", "--bind", f"/proc/self/fd/{fd}", path], check=True, pass_fds=[fd]
        )
        os.close(fd)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    # Open every source first: an earlier mount (an emptyDir on /tmp, say) may hide a later
    # source path; an open descriptor still reaches it.
    sources = [(os.open(host, os.O_PATH), Path(host).is_dir()) for host, _, _ in spec["mounts"]]
    _expose(spec.get("expose") or [])
    # The "image" (virtualenv, interpreter) must stay visible even when a volume is mounted over
    # one of its parents (a checkout under /tmp, with an emptyDir on /tmp): bind it back after.
    images = [(path, os.open(path, os.O_PATH)) for path in spec.get("expose") or [] if os.path.isdir(path)]
    for (fd, is_dir), (_, target, read_only) in zip(sources, spec["mounts"], strict=True):
        _bind(fd, is_dir, target, read_only)
        os.close(fd)
    targets = [Path(target) for _, target, _ in spec["mounts"]]
    for path, fd in images:
        if any(Path(path).is_relative_to(target) for target in targets):
            _bind(fd, True, path, True)
        os.close(fd)
    if spec.get("gid") is not None:
        os.setgroups(spec.get("groups") or [])
        os.setgid(spec["gid"])
    if spec.get("uid") is not None:
        os.setuid(spec["uid"])
    os.chdir(spec.get("cwd") or "/")  # an image's WORKDIR defaults to /
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
