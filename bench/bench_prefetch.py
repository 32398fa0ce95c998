"""Benchmark: `inferator prefetch` against plain parallel curl, boto3 and huggingface_hub, on loopback.

Run: .venv/bin/python bench/bench_prefetch.py [--size-gib 2] [--shards 4] [--parallel 4] [--repeat 1]
Generates a multi-shard safetensors model of --size-gib in a temp dir, serves it with nginx
(HTTP), moto (S3) and the test Hugging Face endpoint (API in Python, LFS bytes redirected to
nginx like the Hub's CDN), and times, each into a fresh directory:

  - inferator prefetch over HTTP (nginx), S3 (moto) and hf:// (test endpoint + nginx)
  - curl: one `curl -o` per file from nginx, --parallel at a time (the HTTP baseline)
  - boto3: a streamed `get_object` per object, --parallel threads (the S3 baseline)
  - huggingface_hub.snapshot_download with its defaults (the hf:// baseline)

Everything runs as a fresh process (interpreter start-up included, as in a Job). Our
prefetch also hashes every byte (sha256) and fsyncs each file before renaming it; the
curl, boto3 and snapshot_download baselines do not fsync, so the "+ sync" rows time them
with a `sync` after the copy, which is what makes their bytes durable too.
Writes the table, with the machine and the date, to bench/results/prefetch-<date>.md
(--out to change, --no-write to skip). Needs nginx (apt-get install -y nginx-light) and
moto[server] in the environment. Not a timed test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the servers live with the tests: one implementation for both

from tests.prefetch_servers import (  # noqa: E402 - after the path set-up above
    MOTO_CREDENTIALS,
    HfRepo,
    HfServer,
    Model,
    make_model,
    moto_s3,
    nginx_server,
    upload_tree,
)

GIB = 1 << 30
MB = 1_000_000


@dataclass
class Result:
    label: str
    seconds: list[float]
    bytes_total: int

    @property
    def best_s(self) -> float:
        return min(self.seconds)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_total / MB / self.best_s


def _python(code: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **(env or {})})


def _prefetch(
    source: str, dest: Path, parallel: int, extra: list[str], env: dict[str, str] | None = None
) -> None:
    command = [sys.executable, "-m", "inferator.cli", "prefetch", "--source", source, "--dest", str(dest),
               "--parallel", str(parallel), "--termination-log", str(dest.parent / "termination-log"), *extra]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})})  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"prefetch exited {done.returncode}:\n{done.stderr}")


def _curl(urls: list[tuple[str, Path]], parallel: int) -> None:
    pending = list(urls)
    running: list[subprocess.Popen[bytes]] = []
    while pending or running:
        while pending and len(running) < parallel:
            url, out = pending.pop(0)
            out.parent.mkdir(parents=True, exist_ok=True)
            running.append(subprocess.Popen(["curl", "-sS", "--fail", "-o", str(out), url]))
        for process in list(running):
            if process.poll() is not None:
                running.remove(process)
                if process.returncode:
                    raise RuntimeError(f"curl exited {process.returncode}")
        time.sleep(0.005)


def _timed(
    label: str, run: Callable[[Path], None], work: Path, repeat: int, total: int, sync: bool = False
) -> Result:
    seconds = []
    for _ in range(repeat):
        dest = work / "out" / "cache"
        shutil.rmtree(work / "out", ignore_errors=True)
        dest.parent.mkdir(parents=True)
        subprocess.run(["sync"], check=True)  # start each run with no dirty pages of the previous one
        start = time.perf_counter()
        run(dest)
        if sync:
            subprocess.run(["sync"], check=True)
        seconds.append(time.perf_counter() - start)
    shutil.rmtree(work / "out", ignore_errors=True)
    result = Result(label, seconds, total)
    print(f"{label:<52} {result.best_s:7.2f} s {result.mb_per_s:8.1f} MB/s", flush=True)
    return result


def run_benchmark(
    size_gib: float, shards: int, parallel: int, repeat: int, work: Path
) -> tuple[list[str], Model]:
    shard_bytes = int(size_gib * GIB / shards)
    started = time.perf_counter()
    model = make_model(
        work / "www" / "llama",
        shard_bytes=(shard_bytes,) * shards,
        seed=random.randrange(1 << 30),  # noqa: S311 - test data, not a secret
    )
    total = model.total_bytes
    print(
        f"generated {len(model.files)} files, {total / GIB:.2f} GiB in {time.perf_counter() - started:.1f}s"
    )
    results: list[Result] = []
    hf_env = {
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(work / "hf-home"),
    }
    with nginx_server(work / "www", workers=max(2, os.cpu_count() or 2)) as nginx, moto_s3() as s3:
        hub = HfServer({"org/llama": HfRepo(model.root)}, cdn_url=nginx.url)
        hub.blob_dir(work / "www" / "cdn")
        started = time.perf_counter()
        upload_tree(s3, "bench", "llama", model)
        print(f"uploaded to moto in {time.perf_counter() - started:.1f}s")
        urls = [(f"{nginx.url}/llama/{f.path}", f.path) for f in model.files]
        with hub:
            results.append(_timed(f"curl, {parallel} in parallel (HTTP)", lambda d: _curl(
                [(u, d / p) for u, p in urls], parallel), work, repeat, total))  # fmt: skip
            results.append(_timed(f"curl, {parallel} in parallel + sync (HTTP)", lambda d: _curl(
                [(u, d / p) for u, p in urls], parallel), work, repeat, total, sync=True))  # fmt: skip
            results.append(_timed("inferator prefetch (HTTP, nginx)", lambda d: _prefetch(
                f"{nginx.url}/llama/", d, parallel, []), work, repeat, total))  # fmt: skip
            # Plain boto3: one streamed GetObject per object (download_file's default 8 MiB ranged parts
            # cost moto a full request each and measure moto, not the client: 97 s for 2 GiB here).
            boto_script = (
                "import sys, boto3; from concurrent.futures import ThreadPoolExecutor as P; from pathlib import Path\n"
                f"c = boto3.client('s3', endpoint_url={s3!r}, region_name='us-east-1')\n"
                "keys = [o['Key'] for o in c.list_objects_v2(Bucket='bench', Prefix='llama/')['Contents']]\n"
                "def get(k, d):\n"
                "    body = c.get_object(Bucket='bench', Key=k)['Body']\n"
                "    with open(d / k.split('/', 1)[1], 'wb') as f:\n"
                "        for chunk in iter(lambda: body.read(8 << 20), b''): f.write(chunk)\n"
            )
            results.append(_timed(f"boto3 get_object streamed, {parallel} threads + sync (S3)", lambda d: _python(
                boto_script + f"d = Path({str(d)!r}); d.mkdir(parents=True, exist_ok=True)\n"
                f"with P({parallel}) as p: list(p.map(lambda k: get(k, d), keys))\n",
                MOTO_CREDENTIALS), work, repeat, total, sync=True))  # fmt: skip
            results.append(_timed("inferator prefetch (S3, moto)", lambda d: _prefetch(
                "s3://bench/llama", d, parallel, ["--endpoint", s3], MOTO_CREDENTIALS), work, repeat, total))  # fmt: skip
            results.append(_timed("huggingface_hub.snapshot_download (defaults) + sync", lambda d: _python(
                f"from huggingface_hub import snapshot_download as s; s('org/llama', endpoint={hub.url!r}, "
                f"local_dir={str(d)!r})", hf_env), work, repeat, total, sync=True))  # fmt: skip
            results.append(_timed("inferator prefetch (hf://, test endpoint + nginx)", lambda d: _prefetch(
                "hf://org/llama", d, parallel, ["--endpoint", hub.url], hf_env), work, repeat, total))  # fmt: skip
    by_label = {r.label: r for r in results}
    curl = by_label[f"curl, {parallel} in parallel (HTTP)"]
    curl_sync = by_label[f"curl, {parallel} in parallel + sync (HTTP)"]
    boto = by_label[f"boto3 get_object streamed, {parallel} threads + sync (S3)"]
    snapshot = by_label["huggingface_hub.snapshot_download (defaults) + sync"]
    ours_http = by_label["inferator prefetch (HTTP, nginx)"]
    ours_s3 = by_label["inferator prefetch (S3, moto)"]
    ours_hf = by_label["inferator prefetch (hf://, test endpoint + nginx)"]
    lines = [f"{'method':<52} {'best s':>8} {'MB/s':>9}  runs (s)"]
    for r in results:
        runs = ", ".join(f"{s:.2f}" for s in r.seconds)
        lines.append(f"{r.label:<52} {r.best_s:8.2f} {r.mb_per_s:9.1f}  {runs}")
    lines += [
        "",
        f"prefetch HTTP / curl:                 {ours_http.mb_per_s / curl.mb_per_s:.2f}x",
        f"prefetch HTTP / (curl + sync):        {ours_http.mb_per_s / curl_sync.mb_per_s:.2f}x",
        f"prefetch S3 / (boto3 + sync):        {ours_s3.mb_per_s / boto.mb_per_s:.2f}x",
        f"prefetch hf:// / snapshot_download:   {ours_hf.mb_per_s / snapshot.mb_per_s:.2f}x",
    ]
    if repeat > 1:
        lines.append(f"median of prefetch HTTP runs: {statistics.median(ours_http.seconds):.2f} s")
    return lines, model


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / (1 << 20):.0f} GiB memory"
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}){memory}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gib", type=float, default=2.0, help="model size (default 2 GiB)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=4, help="concurrent transfers for every method")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the best is reported")
    parser.add_argument("--work-dir", type=Path, help="where to generate and download (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/prefetch-<date>.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-prefetch-", dir=args.work_dir))
    try:
        lines, model = run_benchmark(args.size_gib, args.shards, args.parallel, args.repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if not args.no_write:
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        out = args.out or Path(__file__).parent / "results" / f"prefetch-{today}.md"
        command = (
            f".venv/bin/python bench/bench_prefetch.py --size-gib {args.size_gib:g} --shards {args.shards} "
            f"--parallel {args.parallel} --repeat {args.repeat}"
        )
        workload = (
            f"{len(model.files)} files, {model.total_bytes / GIB:.2f} GiB ({args.shards} safetensors shards of "
            f"random bytes + config/tokenizer/embeddings), {args.parallel} concurrent transfers for every method"
        )
        out.write_text(
            f"# Prefetch benchmark — {today}\n\n- Command: `{command}`\n- Machine: {_machine()}\n"
            f"- Workload: {workload}\n\n```\n" + "\n".join(lines) + "\n```\n"
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
