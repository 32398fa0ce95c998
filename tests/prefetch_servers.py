"""Real servers on loopback for the prefetch tests and benchmark, and a model generator to serve.

- `nginx_server(root)`: Debian's nginx serving a directory with autoindex and Range (the HTTP
  source's target). Fails with the install line when nginx is missing.
- `moto_s3()`: moto's S3 in server mode on a free port; `upload_tree` puts a model there.
- `FileServer(root)`: a small Python HTTP server with Range, an HTML autoindex and *faults*
  (N x 5xx, stall after K bytes, cut after K bytes, auth refusals), logging every request
  so tests can count what was fetched. For the fault tests nginx cannot do.
- `HfServer(repos)`: a Hugging Face-compatible endpoint (HF_ENDPOINT) serving exactly what
  huggingface_hub and the prefetch call: /api/models/{repo}/revision/{rev},
  /api/models/{repo}/tree/{rev}[/{path}], /{repo}/resolve/{rev}/{path} (LFS files redirect
  to a "CDN" URL with a presigned-looking query, like the Hub), with the X-Repo-Commit,
  ETag, X-Linked-Size and X-Linked-Etag headers, and the same faults as FileServer.
- `make_model(root, ...)`: a tiny Llama config.json, a real safetensors file, and larger
  safetensors shards of random bytes.

Plain functions and context managers: pytest fixtures wrap them in the test modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

NGINX_INSTALL = "apt-get install -y nginx-light"
MIB = 1 << 20

# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 512,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class ModelFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Model:
    root: Path
    files: tuple[ModelFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, ModelFile]:
        return {f.path: f for f in self.files}

    @property
    def weight_files(self) -> list[ModelFile]:
        return [f for f in self.files if f.path.endswith(".safetensors")]


def safetensors_header(tensors: dict[str, tuple[str, list[int], int]]) -> bytes:
    """The 8-byte length + JSON header of a safetensors file: {name: (dtype, shape, nbytes)}."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors_shard(path: Path, tensor_bytes: int, name: str, rng: random.Random) -> None:
    """One BF16 tensor of `tensor_bytes` (even) random bytes, written in 8 MiB pieces."""
    elements = tensor_bytes // 2
    with open(path, "wb") as handle:
        handle.write(safetensors_header({name: ("BF16", [elements], elements * 2)}))
        left = elements * 2
        while left:
            piece = min(left, 8 * MIB)
            handle.write(rng.randbytes(piece))
            left -= piece


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def make_model(root: Path, *, shard_bytes: tuple[int, ...] = (3 * MIB, 2 * MIB), seed: int = 7) -> Model:
    """config.json, a small real safetensors file with the tiny Llama's embeddings, N shards, extras.

    Shards are valid safetensors (header + one BF16 tensor of random bytes), so model facts
    can be read from the result and the structural size check applies to every shard.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG, indent=2))
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (root / "tokenizer.json").write_text(
        json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}})
    )
    embed = TINY_LLAMA_CONFIG["vocab_size"] * TINY_LLAMA_CONFIG["hidden_size"]
    with open(root / "embeddings.safetensors", "wb") as handle:
        handle.write(safetensors_header({"model.embed_tokens.weight": ("BF16", [512, 256], embed * 2)}))
        handle.write(rng.randbytes(embed * 2))
    count = len(shard_bytes)
    for index, size in enumerate(shard_bytes, start=1):
        name = f"model-{index:05d}-of-{count:05d}.safetensors"
        write_safetensors_shard(root / name, size - size % 2, f"model.layers.{index - 1}.weight", rng)
    files = tuple(
        ModelFile(p.relative_to(root).as_posix(), p.stat().st_size, _sha256(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    )
    return Model(root, files)


def write_sha256sums(model: Model, name: str = "SHA256SUMS", override: dict[str, str] | None = None) -> None:
    """`sha256sum` output for the model's files (optionally with wrong digests to provoke a mismatch)."""
    lines = [f"{(override or {}).get(f.path, f.sha256)}  {f.path}" for f in model.files]
    (model.root / name).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


# --------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------


class NginxRequest(NamedTuple):
    method: str
    path: str
    status: int
    range: str  # the request's Range header, "" when none
    body_bytes: int  # bytes of body nginx sent


@dataclass
class NginxServer:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    root: Path
    access_log: Path

    def requests(self) -> list[NginxRequest]:
        """Every request nginx has finished so far (a cut connection is logged when it closes)."""
        rows = []
        for line in self.access_log.read_text().splitlines():
            method, path, status, rng, sent = line.split("\t")
            rows.append(NginxRequest(method, path, int(status), rng if rng != "-" else "", int(sent)))
        return rows

    def gets(self, path: str) -> list[NginxRequest]:
        return [r for r in self.requests() if r.method == "GET" and r.path == path]


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise RuntimeError(f"nginx is not installed; the HTTP source tests need it: {NGINX_INSTALL}")
    return found


@contextlib.contextmanager
def nginx_server(
    root: Path, *, autoindex_format: str = "html", workers: int = 2, limit_rate: str = "0"
) -> Iterator[NginxServer]:
    """nginx on 127.0.0.1:<free port> serving `root` (autoindex, Range), config and logs in a temp dir.

    `limit_rate` (nginx syntax, per connection, e.g. "2m") slows downloads so that a test can act
    while they are under way."""
    binary = nginx_binary()
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="nginx-"))
    port = free_port()
    access_log = state / "access.log"
    user = "user root root;" if os.getuid() == 0 else ""  # workers must read the (root-owned) test dirs
    temp_paths = "\n".join(
        f"    {kind}_temp_path {state / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (state / "nginx.conf").write_text(
        f"""
{user}
daemon off;
master_process on;
worker_processes {workers};
pid {state / "nginx.pid"};
error_log {state / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
    log_format ranges '$request_method\\t$uri\\t$status\\t$http_range\\t$body_bytes_sent';
    limit_rate {limit_rate};
    access_log {access_log} ranges;
{temp_paths}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    default_type application/octet-stream;
    types {{ application/json json; text/plain txt; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            autoindex on;
            autoindex_exact_size on;
            autoindex_format {autoindex_format};
        }}
    }}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(state), "-c", str(state / "nginx.conf"), "-e", str(state / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_for_port(port)
        except TimeoutError:
            process.kill()
            _, err = process.communicate(timeout=5)
            raise RuntimeError(f"nginx did not start: {err.decode(errors='replace')}") from None
        access_log.touch()
        yield NginxServer(f"http://127.0.0.1:{port}", root, access_log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# moto (S3)
# --------------------------------------------------------------------------------------------

MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAMOTOTESTKEY00001",
    "AWS_SECRET_ACCESS_KEY": "moto-secret-key-for-tests-0001",
}


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 in server mode on 127.0.0.1:<free port>; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        wait_for_port(port)
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def upload_tree(
    endpoint: str, bucket: str, prefix: str, model: Model, *, sha256_checksums: bool = True
) -> None:
    """Create `bucket` and put every model file under `prefix/` (with a full-object SHA256 checksum)."""
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    from boto3.s3.transfer import TransferConfig

    # One part per object, so the checksum is the whole object's (multipart makes it composite).
    config = TransferConfig(multipart_threshold=64 << 30)
    extra = {"ChecksumAlgorithm": "SHA256"} if sha256_checksums else {}
    for file in model.files:
        client.upload_file(
            str(model.root / file.path),
            bucket,
            f"{prefix.strip('/')}/{file.path}",
            ExtraArgs=extra,
            Config=config,
        )


# --------------------------------------------------------------------------------------------
# A Python HTTP server with faults (and the Hugging Face endpoint built on it)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of (or in the middle of) serving it."""

    status: int | None = None  # answer with this HTTP status
    after_bytes: int | None = None  # send this many body bytes, then stall or cut
    stall_s: float = 0.0  # with after_bytes: go silent this long (then close); 0 means cut at once

    @staticmethod
    def error(status: int = 500) -> Fault:
        return Fault(status=status)

    @staticmethod
    def stall(after_bytes: int, seconds: float) -> Fault:
        return Fault(after_bytes=after_bytes, stall_s=seconds)

    @staticmethod
    def cut(after_bytes: int) -> Fault:
        return Fault(after_bytes=after_bytes)


@dataclass
class RequestRecord:
    method: str
    path: str
    query: str
    range: str
    authorization: str
    status: int = 0  # 0 while the response is still being sent (e.g. a stalled one)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.app.handle(self)

    def do_HEAD(self) -> None:
        self.server.app.handle(self)

    def do_PATCH(self) -> None:
        self.server.app.handle(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: FaultyHttpApp) -> None:
        self.app = app
        super().__init__(("127.0.0.1", 0), _Handler)


@dataclass
class _Body:
    """Bytes to send: a file on disk, or bytes in memory."""

    size: int
    path: Path | None = None
    data: bytes = b""

    def chunks(self, start: int, length: int) -> Iterator[bytes]:
        if self.path is None:
            yield self.data[start : start + length]
            return
        with open(self.path, "rb") as handle:
            handle.seek(start)
            while length > 0:
                piece = handle.read(min(length, MIB))
                if not piece:
                    return
                length -= len(piece)
                yield piece


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class FaultyHttpApp:
    """Request routing, logging, auth, faults and ranged responses; subclasses add routes."""

    def __init__(self, *, token: str | None = None, auth_failure_status: int = 401) -> None:
        self.token = token
        self.auth_failure_status = auth_failure_status
        self.faults: dict[str, list[Fault]] = {}
        self.requests: list[RequestRecord] = []
        self.release = threading.Event()  # set on shutdown: stalled handlers return at once
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first (with ...)"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- test API ---------------------------------------------------------------------------

    def add_faults(self, path: str, *faults: Fault) -> None:
        """Faults for the next requests of `path` (URL path), one per request, in order."""
        with self._lock:
            self.faults.setdefault(path, []).extend(faults)

    def gets(self, path: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path == path]

    # -- serving ----------------------------------------------------------------------------

    def handle(self, request: _Handler) -> None:
        parts = urlsplit(request.path)
        path = unquote(parts.path)
        fault = None
        if request.command == "GET":
            with self._lock:
                queue = self.faults.get(path)
                if queue:
                    fault = queue.pop(0)
        record = RequestRecord(
            request.command,
            path,
            parts.query,
            request.headers.get("Range", ""),
            request.headers.get("Authorization", ""),
        )
        with self._lock:
            self.requests.append(record)  # logged on arrival: a stalled request shows while it stalls
        record.status = self._serve(request, path, parts.query, fault)

    def authorized(self, request: _Handler) -> bool:
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    def _serve(self, request: _Handler, path: str, query: str, fault: Fault | None) -> int:
        if fault is not None and fault.status is not None:
            return self.send_status(request, fault.status)
        return self.route(request, path, query, fault)

    def route(self, request: _Handler, path: str, query: str, fault: Fault | None) -> int:
        raise NotImplementedError

    def send_status(self, request: _Handler, status: int, headers: dict[str, str] | None = None) -> int:
        body = json.dumps({"error": f"HTTP {status}"}).encode()
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
        return status

    def send_json(self, request: _Handler, payload: Any, headers: dict[str, str] | None = None) -> int:
        body = json.dumps(payload).encode()
        request.send_response(200)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
        return 200

    def send_body(
        self, request: _Handler, body: _Body, fault: Fault | None, headers: dict[str, str] | None = None
    ) -> int:
        """200 or 206 (Range), honouring a stall/cut fault part-way through the body."""
        start, end, status = 0, body.size - 1, 200
        match = _RANGE.match(request.headers.get("Range", "").strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), body.size - 1) if match.group(2) else body.size - 1
            else:
                start = max(0, body.size - int(match.group(2)))
            if start >= body.size:
                return self.send_status(request, 416, {"Content-Range": f"bytes */{body.size}"})
            status = 206
        length = end - start + 1 if body.size else 0
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("Content-Length", str(length))
        request.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{end}/{body.size}")
        request.end_headers()
        if request.command == "HEAD":
            return status
        limit = fault.after_bytes if fault is not None and fault.after_bytes is not None else None
        sent = 0
        try:
            for piece in body.chunks(start, length):
                if limit is not None and sent + len(piece) >= limit:
                    request.wfile.write(piece[: limit - sent])
                    request.wfile.flush()
                    sent = limit
                    break
                request.wfile.write(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            request.close_connection = True
            return status
        if limit is not None and fault is not None:
            if fault.stall_s:
                self.release.wait(fault.stall_s)
            request.close_connection = True
            with contextlib.suppress(OSError):
                request.connection.shutdown(socket.SHUT_RDWR)
        return status


class FileServer(FaultyHttpApp):
    """Serves a directory: files with Range, directories (URL ending in '/') as an HTML autoindex."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root

    def route(self, request: _Handler, path: str, query: str, fault: Fault | None) -> int:
        if not self.authorized(request):
            return self.send_status(request, self.auth_failure_status)
        target = (self.root / path.lstrip("/")).resolve()
        if not str(target).startswith(str(self.root.resolve())):
            return self.send_status(request, 404)
        if target.is_dir():
            if not path.endswith("/"):
                return self.send_status(request, 301, {"Location": path + "/"})
            return self._index(request, target, path)
        if not target.is_file():
            return self.send_status(request, 404)
        stat = target.stat()
        headers = {
            "ETag": f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"',
            "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
        }
        return self.send_body(request, _Body(stat.st_size, target), fault, headers)

    def _index(self, request: _Handler, directory: Path, path: str) -> int:
        links = ['<a href="../">../</a>']
        for child in sorted(directory.iterdir()):
            name = child.name + ("/" if child.is_dir() else "")
            links.append(f'<a href="{quote(name)}">{html.escape(name)}</a>')
        body = (
            f"<html><body><h1>Index of {html.escape(path)}</h1><pre>{chr(10).join(links)}</pre></body></html>"
        )
        data = body.encode()
        request.send_response(200)
        request.send_header("Content-Type", "text/html")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)
        return 200


class FakeKubeApi(FaultyHttpApp):
    """Answers PATCH on any path with the patch echoed back, and keeps (path, content type, body)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patches: list[tuple[str, str, Any]] = []

    def route(self, request: _Handler, path: str, query: str, fault: Fault | None) -> int:
        if request.command != "PATCH":
            return self.send_status(request, 405)
        body = json.loads(request.rfile.read(int(request.headers.get("Content-Length", "0"))))
        with self._lock:
            self.patches.append((path, request.headers.get("Content-Type", ""), body))
        return self.send_json(request, {"apiVersion": "inferator.dev/v1alpha1", "kind": "ModelCache", **body})

    def kubeconfig(self, path: Path, token: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))
        return path


# --------------------------------------------------------------------------------------------
# Hugging Face-compatible endpoint
# --------------------------------------------------------------------------------------------

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
PRESIGNED_SECRET = "SIGNATURE-SECRET-9f8e7d6c"  # in every CDN redirect; must never reach a log line


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class HfRepo:
    """A model repository: files on disk, branches/tags -> commit sha."""

    root: Path
    refs: dict[str, str] = field(default_factory=lambda: {"main": "0123456789abcdef0123456789abcdef01234567"})
    lfs_sha256_override: dict[str, str] = field(default_factory=dict)  # lie in the listing (mismatch tests)

    def files(self) -> dict[str, Path]:
        return {p.relative_to(self.root).as_posix(): p for p in sorted(self.root.rglob("*")) if p.is_file()}

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def commit(self, revision: str) -> str | None:
        if revision in self.refs.values():
            return revision
        return self.refs.get(revision)


class HfServer(FaultyHttpApp):
    """The Hub API subset huggingface_hub uses to list and download a model repository."""

    def __init__(self, repos: dict[str, HfRepo], *, cdn_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.repos = repos
        self.cdn_url = cdn_url  # serve LFS blobs from elsewhere (nginx, in the benchmark); default: here
        self._meta: dict[tuple[str, str], tuple[int, str, str]] = {}  # (repo, path) -> size, sha256, blob id
        self.cdn_blobs: dict[str, Path] = {}

    def file_meta(self, repo_id: str, path: str, file: Path) -> tuple[int, str, str]:
        """(size, sha256, git blob oid) of a repo file, computed once."""
        key = (repo_id, path)
        if key not in self._meta:
            data_sha = _sha256(file)
            size = file.stat().st_size
            repo = self.repos[repo_id]
            blob = git_blob_sha1(lfs_pointer(data_sha, size) if repo.is_lfs(path) else file.read_bytes())
            self._meta[key] = (size, data_sha, blob)
            self.cdn_blobs[data_sha] = file
        return self._meta[key]

    def blob_dir(self, target: Path) -> Path:
        """Symlinks named by sha256 to every LFS file: what a CDN (nginx) serves for `cdn_url`."""
        target.mkdir(parents=True, exist_ok=True)
        for repo_id, repo in self.repos.items():
            for path, file in repo.files().items():
                _, sha, _ = self.file_meta(repo_id, path, file)
                link = target / sha
                if repo.is_lfs(path) and not link.exists():
                    link.symlink_to(file)
        return target

    def route(self, request: _Handler, path: str, query: str, fault: Fault | None) -> int:
        if path.startswith("/cdn/"):
            blob = self.cdn_blobs.get(path.removeprefix("/cdn/"))
            if blob is None:
                return self.send_status(request, 404)
            return self.send_body(
                request, _Body(blob.stat().st_size, blob), fault, {"ETag": f'"{blob.name}"'}
            )
        if not self.authorized(request):
            return self.send_status(request, self.auth_failure_status)
        if path.startswith("/api/models/"):
            return self._api(request, path.removeprefix("/api/models/"), parse_qs(query))
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if match:
            return self._resolve(request, match.group(1), unquote(match.group(2)), match.group(3), fault)
        return self.send_status(request, 404)

    def _repo_or_error(self, request: _Handler, repo_id: str, revision: str) -> tuple[HfRepo, str] | int:
        repo = self.repos.get(repo_id)
        if repo is None:  # the Hub answers 401 for repositories it will not show you
            return self.send_status(request, 401, {"X-Error-Code": "RepoNotFound"})
        commit = repo.commit(revision)
        if commit is None:
            return self.send_status(request, 404, {"X-Error-Code": "RevisionNotFound"})
        return repo, commit

    def _api(self, request: _Handler, rest: str, params: dict[str, list[str]]) -> int:
        match = re.match(r"^([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$", rest)
        if not match:
            return self.send_status(request, 404)
        repo_id, kind, revision, sub = (
            match.group(1),
            match.group(2),
            unquote(match.group(3) or "main"),
            match.group(4),
        )
        found = self._repo_or_error(request, repo_id, revision)
        if isinstance(found, int):
            return found
        repo, commit = found
        files = repo.files()
        if kind == "tree":
            recursive = params.get("recursive", ["false"])[0].lower() in ("true", "1")
            return self.send_json(request, self._tree(repo_id, repo, files, unquote(sub or ""), recursive))
        siblings = [{"rfilename": p} for p in files]
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": siblings,
        }
        return self.send_json(request, info)

    def _tree(
        self, repo_id: str, repo: HfRepo, files: dict[str, Path], sub: str, recursive: bool
    ) -> list[Any]:
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, file in files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/", 1)[0])
                continue
            for depth in range(1, rest.count("/") + 1):
                folders.add(prefix + "/".join(rest.split("/")[:depth]))
            size, sha, blob = self.file_meta(repo_id, path, file)
            entry: dict[str, Any] = {"type": "file", "oid": blob, "size": size, "path": path}
            if repo.is_lfs(path):
                pointer = lfs_pointer(sha, size)
                entry["lfs"] = {
                    "oid": repo.lfs_sha256_override.get(path, sha),
                    "size": size,
                    "pointerSize": len(pointer),
                }
            entries.append(entry)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)]
        return entries

    def _resolve(self, request: _Handler, repo_id: str, revision: str, path: str, fault: Fault | None) -> int:
        found = self._repo_or_error(request, repo_id, revision)
        if isinstance(found, int):
            return found
        repo, commit = found
        path = unquote(path)
        file = repo.files().get(path)
        if file is None:
            return self.send_status(request, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        size, sha, blob = self.file_meta(repo_id, path, file)
        if repo.is_lfs(path):
            # The Hub's LFS bytes come from another host; `localhost` is this server under another name.
            base = self.cdn_url or self.url.replace("127.0.0.1", "localhost")
            location = f"{base}/cdn/{sha}?X-Amz-Signature={PRESIGNED_SECRET}&Expires=9999999999"
            headers = {
                "Location": location,
                "X-Repo-Commit": commit,
                "ETag": f'"{blob}"',
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(size),
            }
            return self.send_status(request, 302, headers)
        return self.send_body(
            request, _Body(size, file), fault, {"X-Repo-Commit": commit, "ETag": f'"{blob}"'}
        )


# --------------------------------------------------------------------------------------------
# Running a prefetch in-process
# --------------------------------------------------------------------------------------------


class RecordingSink:
    """A StatusSink that keeps every patch (and can fail the first N, like an API server restarting)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.patches: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()

    def patch_status(self, status: dict[str, Any]) -> None:
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                raise ConnectionError("API server unavailable")
            self.patches.append(json.loads(json.dumps(status)))

    @property
    def final(self) -> dict[str, Any]:
        """The last patch that carried a size (the size or final report)."""
        reports = [p for p in self.patches if "sizeBytes" in p]
        assert reports, f"no final report among {self.patches}"
        return reports[-1]

    @property
    def progress(self) -> list[dict[str, Any]]:
        return [p["progress"] for p in self.patches if "progress" in p]


@dataclass
class PrefetchRun:
    code: int
    sink: RecordingSink
    dest: Path
    termination: str

    @property
    def manifest(self) -> dict[str, Any] | None:
        path = self.dest / ".inferator" / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None


def run_prefetch(
    source: str,
    dest: Path,
    *,
    mode: str = "fetch",
    credentials: dict[str, str] | None = None,
    sink: RecordingSink | None = None,
    **overrides: Any,
) -> PrefetchRun:
    """`inferator prefetch` in this process with test-speed retries, reporting into a RecordingSink."""
    from inferator.prefetch.config import PrefetchConfig
    from inferator.prefetch.main import execute
    from inferator.prefetch.redact import Redactor

    termination = dest.parent / f"{dest.name}.termination-log"
    termination.unlink(missing_ok=True)
    settings: dict[str, Any] = {
        "parallel": 4,
        "stall_timeout_s": 5.0,
        "retry_backoff_s": 0.05,
        "max_attempts": 4,
        "progress_interval_s": 0.2,
        "content_hash": "c0ffee1234",
    }
    settings.update(overrides)
    config = PrefetchConfig(
        source=source,
        dest=dest,
        mode="size" if mode == "size" else "check" if mode == "check" else "fetch",
        termination_log=termination,
        credentials=credentials or {},
        **settings,
    )
    sink = sink or RecordingSink()
    code = execute(config, sink, Redactor((credentials or {}).values()))
    return PrefetchRun(code, sink, dest, termination.read_text() if termination.exists() else "")


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of the files under root, outside `.inferator/`."""
    return {
        p.relative_to(root).as_posix(): _sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".inferator" not in p.relative_to(root).parts
    }
