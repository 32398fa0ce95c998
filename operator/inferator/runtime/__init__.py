"""Code that runs inside the serving container: detect the GPUs, assert the profile and the cache, exec the engine.

`inferator runtime` (entrypoint.py) is the container's command. It re-checks what the
operator assumed when it selected the profile, refuses to start with a one-line reason in
the termination log when the node or the cache is not what the profile needs, and otherwise
replaces itself with the engine's server. `gpus.py` is the only module that talks to NVML.
"""
