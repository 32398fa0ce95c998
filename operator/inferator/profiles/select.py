"""Profile selection: candidates x feasibility (with reasons in numbers) x ranking -> one ServingProfile.

`select_profile` is pure: model facts, Node dicts, the InferenceService spec and the operator's
settings in; a `Selection` out. "Nothing fits" is a normal answer (`Selection.failure`), not an
exception, and carries the reason of every rejected candidate.

A profile is named `<engine>-<gpu>-<precision>-tp<N>-<target>`, e.g. `vllm-h100-fp8-tp2-latency`;
CPU profiles use `cpu` as the GPU part (`vllm-cpu-cpu-fp32-tp1-latency`), so every name splits
the same way. The name does not include the pool's GPU count: a tp2 profile on H100 may run on
any H100 node with two free GPUs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferator.api.inferenceservice import (
    Candidate,
    Engine,
    Estimates,
    InferenceServiceSpec,
    Precision,
    Target,
)
from inferator.api.modelcache import ModelFacts
from inferator.api.profile import ServingProfile
from inferator.profiles import compatibility as compat
from inferator.profiles import engines as eng
from inferator.profiles import tasks
from inferator.profiles.catalog import BUILTIN_CATALOG, GpuSpec, find_by_short_name_or_product
from inferator.profiles.measured import Measured
from inferator.profiles.memory import (
    GIB,
    MIB,
    MemoryPlan,
    gib,
    plan_cpu_memory,
    plan_gpu_memory,
    precision_of_dtype,
    quantized_precision,
)
from inferator.profiles.pools import CPU_POOL_KEY, ExcludedNode, GpuPool, PoolScan, gpu_pools
from inferator.profiles.settings import SelectionSettings

TARGETS: tuple[Target, ...] = ("latency", "throughput")
CONTEXT_STEP_TOKENS = (
    256  # a shrunk context is rounded down to this (a multiple of every engine's block size)
)
DEFAULT_CONTEXT_TOKENS = 4096  # when config.json states no max_position_embeddings
_NAME = re.compile(
    r"^(?P<engine>vllm-cpu|vllm|trtllm|sglang)-(?P<gpu>.+)-"
    r"(?P<precision>nvfp4|mxfp4|fp8|int8|awq|gptq|int4|fp16|bf16|fp32)"
    r"-tp(?P<tp>\d+)(-pp(?P<pp>\d+))?-(?P<target>latency|throughput)$"
)


def profile_name(
    engine: Engine, gpu_short_name: str, precision: Precision, tp: int, target: Target, pp: int = 1
) -> str:
    """`<engine>-<gpu>-<precision>-tp<N>[-pp<M>]-<target>`; the pipeline part only when it spans nodes."""
    stages = f"-pp{pp}" if pp > 1 else ""
    return f"{engine}-{gpu_short_name}-{precision}-tp{tp}{stages}-{target}"


def parse_profile_name(name: str) -> dict[str, str] | None:
    """Split a profile name into engine, gpu, precision, tp, pp and target; None if it does not follow the scheme."""
    match = _NAME.match(name)
    if not match:
        return None
    parts = match.groupdict()
    parts["pp"] = parts.get("pp") or "1"
    return parts


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """One (engine, precision, TP, target, pool) with its verdict, reason and memory plan."""

    name: str
    engine: Engine
    precision: Precision
    tensor_parallel_size: int
    target: Target
    pool: GpuPool
    feasible: bool
    reason: str
    memory: MemoryPlan | None = None
    max_model_len: int = 0
    native: bool = True  # the device runs this precision natively (not emulated)
    online_quantization: bool = False
    # Fits, but the GPU-count policy does not offer it (a pin or a TP selector still may).
    held_back: bool = False
    # Nodes one replica spans: tensor parallel within each node, pipeline stages across them.
    nodes: int = 1

    def to_api(self) -> Candidate:
        return Candidate(name=self.name, feasible=self.feasible, reason=f"{self.pool.key}: {self.reason}")

    def _max_sequences(self, kv_bytes: int) -> int | None:
        m = self.memory
        if m is None or not m.kv_bytes_per_sequence_per_gpu:
            return None
        return kv_bytes // m.kv_bytes_per_sequence_per_gpu

    def estimates(self) -> Estimates | None:
        if self.memory is None:
            return None
        m = self.memory
        kv_bytes = m.kv_cache_bytes_per_gpu
        kv_tokens = m.kv_cache_tokens
        if self.engine == "vllm-cpu":
            kv_bytes = eng.cpu_kv_cache_space_gib(m.kv_required_bytes_per_gpu) * GIB
            kv_tokens = m.tokens_in(kv_bytes)
        return Estimates(
            weight_bytes_per_gpu=m.weight_bytes_per_gpu,
            kv_cache_bytes_per_gpu=kv_bytes,
            kv_cache_tokens=kv_tokens,
            max_concurrent_sequences=self._max_sequences(kv_bytes),
            required_bytes_per_gpu=m.required_bytes_per_gpu,
            available_bytes_per_gpu=m.available_bytes_per_gpu,
        )


@dataclass(frozen=True, slots=True)
class NoCompatibleProfile:
    """Why nothing was selected: a one-line message and every reason behind it."""

    message: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of selection. `profile` is None exactly when `failure` is set.

    candidates: every candidate, feasible ones in rank order first (the chosen one at index 0
    when selection succeeded), then the rejected ones with their reasons.
    """

    profile: ServingProfile | None
    failure: NoCompatibleProfile | None
    pool: GpuPool | None
    estimates: Estimates | None
    max_model_len: int | None
    candidates: tuple[ScoredCandidate, ...]
    node_selector: dict[str, str] = field(default_factory=dict)
    node_affinity: dict[str, Any] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    shm_size_bytes: int = 0
    gpu_request: int = 0
    readiness_path: str = "/v1/models"
    # Memory the server container needs (CPU profiles: weights + KV space + reserve); 0 on GPUs,
    # where the model lives in GPU memory and the container's own needs are the user's resources.
    memory_request_bytes: int = 0
    pools: tuple[GpuPool, ...] = ()
    excluded_nodes: tuple[ExcludedNode, ...] = ()

    @property
    def ok(self) -> bool:
        return self.profile is not None

    @property
    def chosen(self) -> ScoredCandidate | None:
        return self.candidates[0] if self.ok else None

    def status_candidates(self, limit: int = 10) -> list[Candidate]:
        """The first `limit` candidates as the API's Candidate (chosen first, then the rest by rank)."""
        return [c.to_api() for c in self.candidates[:limit]]

    @property
    def message(self) -> str:
        if self.failure is not None:
            return self.failure.message
        chosen = self.chosen
        assert chosen is not None and self.profile is not None
        return f"selected {self.profile.name} on pool {chosen.pool.key}: {chosen.reason}"


@dataclass(frozen=True, slots=True)
class _Constraints:
    engines: frozenset[str] | None
    precisions: frozenset[str] | None
    tps: frozenset[int] | None
    gpu_products: frozenset[str] | None
    nodes: frozenset[int] | None = None


def _constraints(spec: InferenceServiceSpec, catalog: Mapping[str, GpuSpec] | None) -> _Constraints:
    sel = spec.selector
    if spec.profile or sel is None:
        return _Constraints(None, None, None, None)
    cat = BUILTIN_CATALOG if catalog is None else catalog
    return _Constraints(
        engines=frozenset(sel.engines) or None,
        precisions=frozenset(sel.precisions) or None,
        tps=frozenset(sel.tensor_parallel_sizes) or None,
        gpu_products=frozenset(find_by_short_name_or_product(p, cat) for p in sel.gpu_products) or None,
        nodes=frozenset(sel.nodes) or None,
    )


def _selector_reason(
    c: _Constraints, engine: str, precision: str, tp: int, pool: GpuPool, nodes: int = 1
) -> str:
    if c.nodes is not None and nodes not in c.nodes:
        return f"{nodes} node{'s' if nodes > 1 else ''} per replica not allowed by selector.nodes {sorted(c.nodes)}"
    if c.engines is not None and engine not in c.engines:
        return f"engine {engine} not allowed by selector.engines {sorted(c.engines)}"
    if c.precisions is not None and precision not in c.precisions:
        return f"precision {precision} not allowed by selector.precisions {sorted(c.precisions)}"
    if c.tps is not None and tp not in c.tps:
        return f"tp{tp} not allowed by selector.tensorParallelSizes {sorted(c.tps)}"
    if c.gpu_products is not None and (pool.gpu is None or pool.gpu.product not in c.gpu_products):
        return f"GPU {pool.display_name} not allowed by selector.gpuProducts {sorted(c.gpu_products)}"
    return ""


def _gpu_precisions(facts: ModelFacts) -> tuple[list[tuple[Precision, bool]], str]:
    """(precision, online quantisation) pairs the checkpoint can be served in, or a reason it cannot."""
    pre, reason = quantized_precision(facts)
    if reason:
        return [], reason
    if pre is not None:
        return [(pre, False)], ""
    native = precision_of_dtype(facts.dtype)
    base: Precision = "fp16" if native == "fp16" else "bf16"
    if facts.task != "generate":
        return [(base, False)], ""  # pooling models are small and accuracy-sensitive: served as trained
    return [(base, False), ("fp8", True)], ""


def _precision_verdict(
    engine: Engine, precision: Precision, online: bool, gpu: GpuSpec, plan: tasks.TaskPlan
) -> tuple[str, bool]:
    """('' or the reason this engine cannot run this precision on this GPU, natively supported?).

    The per-engine, per-generation table with its sources is profiles/compatibility.py.
    """
    if refusal := tasks.plan_refusal(engine, plan):
        return refusal, True
    if engine == "trtllm" and online:
        return "trtllm-serve does not quantise at load: it needs an FP8-quantised checkpoint (ModelOpt)", True
    runs, native, reason = compat.support(engine, precision, gpu.compute_capability)
    if not runs:
        return f"{reason} ({gpu.display_name})", False
    if online and not native and engine != "vllm":
        # vLLM quantises a bf16 checkpoint to FP8 at load on Ampere too (weight-only Marlin).
        return f"online {precision} quantisation needs native {precision} kernels ({gpu.display_name})", False
    return "", native


def _tp_reason(facts: ModelFacts, tp: int, pool: GpuPool) -> str:
    if pool.gpu is not None and pool.gpu.mig_slice and tp > 1:
        return f"tp{tp}: MIG slices cannot be combined for tensor parallelism"
    if facts.num_attention_heads % tp:
        return f"tp{tp}: {facts.num_attention_heads} attention heads are not divisible by {tp}"
    kv = facts.num_key_value_heads
    if kv % tp and tp % kv:
        return f"tp{tp}: {kv} KV heads neither divide by {tp} nor divide it"
    return ""


def _round_context(tokens: int) -> int:
    return tokens - tokens % CONTEXT_STEP_TOKENS if tokens >= CONTEXT_STEP_TOKENS else tokens


@dataclass(frozen=True, slots=True)
class _Context:
    """The context asked for: pinned by serving.maxModelLen, or the model's maximum and shrinkable."""

    model_max: int
    requested: int | None
    min_concurrency: int
    min_auto_len: int


# (fits, reason, memory plan, context length) of one (precision, TP, device) combination.
_Verdict = tuple[bool, str, MemoryPlan | None, int]


def _memory_verdict(
    plan_at: Callable[[int], MemoryPlan], ctx: _Context, tp: int, offers: str, util: float
) -> _Verdict:
    """Fit the KV for the context; when the context is not pinned, shrink it to what fits (not below min_auto_len)."""
    conc = ctx.min_concurrency
    length = ctx.requested or ctx.model_max
    plan = plan_at(length)
    if plan.fits:
        return True, _fit_reason(plan, length, conc, ""), plan, length
    if ctx.requested is None:
        floor = min(ctx.min_auto_len, ctx.model_max)
        estimate = _round_context(min(ctx.model_max, plan.max_model_len_that_fits(conc)))
        shrunk = _longest_fitting_context(plan_at, floor, estimate)
        if shrunk is not None:
            plan = plan_at(shrunk)
            note = f"; context shrunk from {ctx.model_max} to {shrunk} tokens to fit (set serving.maxModelLen to pin)"
            return True, _fit_reason(plan, shrunk, conc, note), plan, shrunk
        length = floor
        plan = plan_at(length)
    reason = (
        f"tp{tp}: needs {gib(plan.required_bytes_per_gpu)} GiB per {'GPU' if offers != 'CPU' else 'node'} "
        f"(weights {gib(plan.weight_bytes_per_gpu)} + KV {gib(plan.kv_required_bytes_per_gpu)} for "
        f"{length} tokens x {conc} + overhead {gib(plan.overhead_bytes_per_gpu)}), "
        f"{offers} offers {gib(plan.available_bytes_per_gpu)} (x {util:.2f})"
    )
    return False, reason, plan, length


def _longest_fitting_context(plan_at: Callable[[int], MemoryPlan], floor: int, estimate: int) -> int | None:
    """The longest context in [floor, estimate] that fits (a multiple of CONTEXT_STEP_TOKENS, or floor).

    `estimate` comes from the KV budget and is usually the answer; rounding (vLLM-CPU's whole-GiB
    KV space) can make it miss, so a binary search over the steps below it settles the rest.
    """
    if not plan_at(floor).fits:
        return None
    if estimate <= floor:
        return floor
    if plan_at(estimate).fits:
        return estimate
    best = floor
    low, high = -(-floor // CONTEXT_STEP_TOKENS), estimate // CONTEXT_STEP_TOKENS - 1
    while low <= high:
        middle = (low + high) // 2
        if plan_at(middle * CONTEXT_STEP_TOKENS).fits:
            best = max(best, middle * CONTEXT_STEP_TOKENS)
            low = middle + 1
        else:
            high = middle - 1
    return best


def _fit_reason(plan: MemoryPlan, length: int, min_concurrency: int, note: str) -> str:
    if not plan.kv_bytes_per_token_per_gpu:
        # An encoder (BERT, XLM-R) recomputes every request: nothing is cached, concurrency is free.
        return (
            f"fits: {gib(plan.required_bytes_per_gpu)} of {gib(plan.available_bytes_per_gpu)} GiB "
            f"(weights {gib(plan.weight_bytes_per_gpu)} + overhead {gib(plan.overhead_bytes_per_gpu)}); "
            f"no KV cache (encoder){note}"
        )
    return (
        f"fits: {gib(plan.required_bytes_per_gpu)} of {gib(plan.available_bytes_per_gpu)} GiB "
        f"(weights {gib(plan.weight_bytes_per_gpu)} + KV {gib(plan.kv_required_bytes_per_gpu)} for {length} tokens "
        f"x {min_concurrency} + overhead {gib(plan.overhead_bytes_per_gpu)}); KV room for "
        f"{plan.kv_cache_tokens} tokens{note}"
    )


def _per_target(
    constraints: _Constraints,
    engine: Engine,
    device_short_name: str,
    precision: Precision,
    tp: int,
    pool: GpuPool,
    verdict: _Verdict,
    native: bool,
    online: bool,
    policy: Mapping[str, str] | None = None,
    nodes: int = 1,
) -> list[ScoredCandidate]:
    """One candidate per target for a verdict (targets share memory; they differ in rank, GPU count policy and flags)."""
    fits, reason, plan, length = verdict
    excluded = _selector_reason(constraints, engine, precision, tp, pool, nodes)
    policy = policy or {}
    return [
        ScoredCandidate(
            name=profile_name(engine, device_short_name, precision, tp, target, nodes),
            engine=engine,
            precision=precision,
            tensor_parallel_size=tp,
            target=target,
            pool=pool,
            feasible=fits and not excluded and not policy.get(target),
            reason=excluded or (policy.get(target) if fits and policy.get(target) else reason) or reason,
            memory=plan,
            max_model_len=length,
            native=native,
            online_quantization=online,
            held_back=bool(fits and not excluded and policy.get(target)),
            nodes=nodes,
        )
        for target in TARGETS
    ]


def _gpu_count_policy(
    verdicts: Sequence[tuple[int, _Verdict]], ctx: _Context, latency_factor: float
) -> dict[int, dict[str, str]]:
    """Per TP and target, why a candidate that fits is still not offered (empty: offered).

    Throughput: the fewest GPUs that hold the weights and the requested KV (the full context
    unless serving.maxModelLen pins less). Latency: the most GPUs within `latency_factor` times
    that. A TP that fits only by shrinking the context is not offered when a larger one holds
    the full context.
    """
    wanted = ctx.requested or ctx.model_max
    fitting = [tp for tp, (fits, _, _, _) in verdicts if fits]
    if not fitting:
        return {}
    full = [tp for tp, (fits, _, _, length) in verdicts if fits and length >= wanted]
    base = min(full) if full else min(fitting)
    cap = base * latency_factor
    out: dict[int, dict[str, str]] = {}
    for tp, (fits, _, _, length) in verdicts:
        if not fits or tp == base:
            continue
        if tp < base:
            why = (
                f"tp{tp}: holds the model only with the context shrunk to {length} tokens, tp{base} holds "
                f"the requested {wanted} (set serving.maxModelLen to serve less on fewer GPUs)"
            )
            out[tp] = {"latency": why, "throughput": why}
            continue
        out[tp] = {
            "throughput": f"tp{tp}: throughput profiles use the fewest GPUs that hold the model and its KV (tp{base})",
            "latency": ""
            if tp <= cap
            else (
                f"tp{tp}: latency profiles use at most {latency_factor:g} x the tp{base} that holds the model "
                "(selection.latencyGpuFactor), not every GPU a node has"
            ),
        }
    return out


def score_candidates(
    facts: ModelFacts,
    pools: Sequence[GpuPool],
    spec: InferenceServiceSpec,
    settings: SelectionSettings,
    catalog: Mapping[str, GpuSpec] | None = None,
) -> tuple[list[ScoredCandidate], list[str]]:
    """Every candidate on every pool with its verdict, plus reasons that apply to all of them."""
    serving = spec.serving
    task = tasks.plan_task(facts, serving.task)
    if task.refusal:
        return [], [task.refusal]
    facts = tasks.served_facts(facts, task)
    ctx = _Context(
        model_max=facts.max_position_embeddings or DEFAULT_CONTEXT_TOKENS,
        requested=serving.max_model_len,
        min_concurrency=serving.min_concurrency,
        min_auto_len=settings.min_auto_model_len,
    )
    if ctx.requested is not None and ctx.requested > ctx.model_max:
        return [], [
            f"serving.maxModelLen {ctx.requested} exceeds the model's maximum context of {ctx.model_max} tokens "
            "(max_position_embeddings); lower it"
        ]
    gpu_precisions, global_reason = _gpu_precisions(facts)
    if global_reason:
        return [], [global_reason]
    constraints = _constraints(spec, catalog)
    enabled = [e for e in settings.engine_order if e in settings.engines] + [
        e for e in settings.engines if e not in settings.engine_order
    ]
    reserve = settings.extra_reserve_mib * MIB
    util = serving.gpu_memory_utilization
    # A pinned profile or an explicit list of TP sizes is the user's choice of GPU count.
    uncapped = bool(spec.profile) or constraints.tps is not None
    # Several nodes per replica: asked for by selector.nodes or a pinned -ppN profile.
    pinned = parse_profile_name(spec.profile) if spec.profile else None
    wanted_nodes = constraints.nodes if constraints.nodes and max(constraints.nodes) > 1 else None
    if pinned and int(pinned["pp"]) > 1:
        wanted_nodes = frozenset({int(pinned["pp"])})
    memo_nodes: dict[tuple[str, int, int], _Verdict] = {}
    out: list[ScoredCandidate] = []
    # Engines and targets share the memory plan of a (precision, TP, GPU memory) combination.
    memo: dict[tuple[str, int, int], _Verdict] = {}
    for pool in pools:
        gpu = pool.gpu
        if gpu is None:
            if "vllm-cpu" in enabled:
                out.extend(_cpu_candidates(facts, pool, settings, constraints, ctx))
            continue
        gpu_bytes = gpu.memory_mib * MIB
        tps = [tp for tp in sorted(set(settings.tensor_parallel_sizes)) if tp <= pool.gpus_per_node]
        for engine in enabled:
            if engine == "vllm-cpu":
                continue
            for precision, online in gpu_precisions:
                prec_reason, native = _precision_verdict(engine, precision, online, gpu, task)
                verdicts: list[tuple[int, _Verdict]] = []
                for tp in tps:
                    rejection = _tp_reason(facts, tp, pool) or prec_reason
                    if rejection:
                        verdict: _Verdict = (False, rejection, None, 0)
                    else:
                        key = (precision, tp, gpu.memory_mib)
                        if key not in memo:

                            def plan_at(
                                length: int, p: Precision = precision, t: int = tp, total: int = gpu_bytes
                            ) -> MemoryPlan:
                                return plan_gpu_memory(
                                    facts, p, t, length, ctx.min_concurrency, total, util, reserve
                                )

                            memo[key] = _memory_verdict(plan_at, ctx, tp, gpu.display_name, util)
                        verdict = memo[key]
                    verdicts.append((tp, verdict))
                policy = {} if uncapped else _gpu_count_policy(verdicts, ctx, settings.latency_gpu_factor)
                for tp, verdict in verdicts:
                    out.extend(
                        _per_target(
                            constraints,
                            engine,
                            gpu.short_name,
                            precision,
                            tp,
                            pool,
                            verdict,
                            native,
                            online,
                            policy.get(tp, {}),
                        )
                    )
                # Several nodes only where one node lacks memory, not where the engine, the
                # precision or the task rule the candidate out (more nodes would not help).
                single_fits = any(v[0] for _, v in verdicts)
                memory_bound = any(plan is not None for _, (_, _, plan, _) in verdicts)
                if wanted_nodes or (memory_bound and not single_fits):
                    out.extend(_multi_node_candidates(
                        facts, pool, engine, precision, online, native, prec_reason, constraints, ctx,
                        util, reserve, wanted_nodes, settings, memo_nodes,
                    ))  # fmt: skip
    return out, []


MULTI_NODE_ENGINES = ("vllm", "sglang")
# Nodes per replica selection considers (HGX/DGX-class nodes: 8 GPUs each, so up to 64 GPUs).
MAX_NODES = 8


def _multi_node_candidates(
    facts: ModelFacts,
    pool: GpuPool,
    engine: Engine,
    precision: Precision,
    online: bool,
    native: bool,
    prec_reason: str,
    constraints: _Constraints,
    ctx: _Context,
    util: float,
    reserve: int,
    wanted: frozenset[int] | None,
    settings: SelectionSettings,
    memo: dict[tuple[str, int, int], _Verdict],
) -> list[ScoredCandidate]:
    """Candidates spanning 2..MAX_NODES nodes of a pool: every GPU of a node in tensor parallel,
    one pipeline stage per node (the layers split across nodes, only activations cross them).

    Offered only when no single node holds the model, or when the spec asks (selector.nodes, or
    a pinned -ppN profile); the fewest nodes that hold the model are offered, more are held back.
    """
    gpu = pool.gpu
    assert gpu is not None
    tp = pool.gpus_per_node
    # Up to the pool's nodes (at least 2, so that a pool too small says so once).
    counts = sorted(wanted - {1}) if wanted else list(range(2, max(2, min(MAX_NODES, pool.node_count)) + 1))
    verdicts: list[tuple[int, _Verdict]] = []
    for nodes in counts:
        if engine not in MULTI_NODE_ENGINES:
            rejection = (
                f"{engine}: multi-node serving is rendered for {' and '.join(MULTI_NODE_ENGINES)} only"
            )
        elif nodes > pool.node_count:
            rejection = f"pp{nodes}: needs {nodes} nodes, pool {pool.key} has {pool.node_count}"
        elif nodes > pool.largest_domain:
            rejection = (f"pp{nodes}: needs {nodes} nodes in one {pool.topology_key} (a group stays in one topology "
                         f"domain), pool {pool.key} has at most {pool.largest_domain} in one")  # fmt: skip
        elif nodes > facts.num_layers:
            rejection = f"pp{nodes}: more pipeline stages than the model's {facts.num_layers} layers"
        else:
            rejection = _tp_reason(facts, tp, pool) or prec_reason
        if rejection:
            verdicts.append((nodes, (False, rejection, None, 0)))
            continue
        key = (f"{precision}-pp{nodes}", tp, gpu.memory_mib)
        if key not in memo:

            def plan_at(length: int, p: Precision = precision, n: int = nodes) -> MemoryPlan:
                return plan_gpu_memory(facts, p, tp, length, ctx.min_concurrency, gpu.memory_mib * MIB, util,
                                       reserve, pipeline_parallel_size=n)  # fmt: skip

            memo[key] = _memory_verdict(plan_at, ctx, tp, f"{gpu.display_name} x {nodes} nodes", util)
        verdicts.append((nodes, memo[key]))
    fewest = next((n for n, v in verdicts if v[0]), None)
    out: list[ScoredCandidate] = []
    for nodes, verdict in verdicts:
        why = ""
        if verdict[0] and fewest is not None and nodes > fewest and not wanted:
            why = f"pp{nodes}: {fewest} nodes hold the model; a replica spans no more nodes than it needs"
        out.extend(_per_target(constraints, engine, gpu.short_name, precision, tp, pool, verdict, native, online,
                               {"latency": why, "throughput": why}, nodes))  # fmt: skip
    return out


def _cpu_candidates(
    facts: ModelFacts, pool: GpuPool, settings: SelectionSettings, constraints: _Constraints, ctx: _Context
) -> list[ScoredCandidate]:
    """vLLM-CPU candidates: TP 1, fp32 (bf16 too where the nodes advertise AVX512-BF16/AMX)."""
    out = []
    precisions: list[Precision] = ["fp32"]
    if precision_of_dtype(facts.dtype) == "bf16" and pool.cpu_bf16:
        precisions.insert(0, "bf16")
    util = settings.cpu_memory_utilization
    for precision in precisions:
        verdict: _Verdict
        if facts.quantization is not None:
            method = facts.quantization.method
            verdict = (
                False,
                f"vLLM's CPU backend profiles cover unquantised checkpoints, this one is {method}",
                None,
                0,
            )
        elif pool.memory_bytes_per_node <= 0:
            verdict = (False, "the CPU nodes report no allocatable memory", None, 0)
        else:

            def plan_at(length: int, p: Precision = precision) -> MemoryPlan:
                return plan_cpu_memory(
                    facts,
                    p,
                    length,
                    ctx.min_concurrency,
                    pool.memory_bytes_per_node,
                    util,
                    settings.extra_reserve_mib * MIB,
                )

            verdict = _memory_verdict(plan_at, ctx, 1, "CPU", util)
        out.extend(
            _per_target(constraints, "vllm-cpu", CPU_POOL_KEY, precision, 1, pool, verdict, True, False)
        )
    return out


RankKeyFn = Callable[[ScoredCandidate], tuple[Any, ...]]


def rank_key_function(
    settings: SelectionSettings, preferred_target: Target, pooling: bool = False
) -> RankKeyFn:
    """The sort key of candidates under `settings.ranking` (see SelectionSettings), most significant first.

    Built once per selection (the orders become dict lookups) because it runs for every candidate.
    Pooling models (embed, rerank, classify) are small and answer in one compute-bound pass:
    more GPUs or faster memory buy them little, so they rank the fewest GPUs and the smallest
    GPU that holds them first (an L4 or a MIG slice before an H100), keeping big GPUs for
    generation.
    """
    precision_index = {p: i for i, p in enumerate(settings.precision_order)}
    engine_index = {e: i for i, e in enumerate(settings.engine_order)}
    unknown_precision, unknown_engine = len(precision_index), len(engine_index)
    parts: dict[str, Callable[[ScoredCandidate], Any]] = {
        "device": lambda c: 0 if c.pool.gpu is not None else 1,
        "target": lambda c: 0 if c.target == preferred_target else 1,
        "precision": lambda c: (0 if c.native else 1, precision_index.get(c.precision, unknown_precision)),
        "engine": lambda c: engine_index.get(c.engine, unknown_engine),
        "tensor_parallel": lambda c: (
            -c.tensor_parallel_size if c.target == "latency" and not pooling else c.tensor_parallel_size
        ),
        "bandwidth": (
            (lambda c: c.pool.gpu.memory_mib if c.pool.gpu else 0)
            if pooling
            else (lambda c: -(c.pool.gpu.memory_bandwidth_gb_per_s if c.pool.gpu else 0))
        ),
        "name": lambda c: c.name,
    }
    chosen = [parts[key] for key in settings.ranking]

    def key(candidate: ScoredCandidate) -> tuple[Any, ...]:
        # The name and pool key close every order, so equal keys never depend on input order.
        return (*[fn(candidate) for fn in chosen], candidate.name, candidate.pool.key)

    return key


def rank_by_measurements(
    ranked: Sequence[ScoredCandidate],
    measured: Mapping[tuple[str, str], Measured],
    preferred_target: Target,
) -> list[ScoredCandidate]:
    """Feasible measured candidates first, best measured first (throughput: output tokens/s;
    latency: TTFT p99, then tokens/s); unmeasured ones after them in the static order, which a
    stable sort keeps. Never measured, never moved: a profile gets numbers only by running."""

    def key(c: ScoredCandidate) -> tuple[Any, ...]:
        m = measured.get((c.name, c.pool.key))
        if not c.feasible:
            return (2,)
        if m is None:
            return (1,)
        if preferred_target == "latency" and m.ttft_p99_ms is not None:
            return (0, m.ttft_p99_ms, -m.output_tokens_per_second)
        return (0, -m.output_tokens_per_second)

    return sorted(ranked, key=key)


def rank_candidates(
    candidates: Iterable[ScoredCandidate],
    settings: SelectionSettings,
    preferred_target: Target = "latency",
    pooling: bool = False,
) -> list[ScoredCandidate]:
    """Feasible candidates in rank order, then infeasible ones in the same order."""
    key = rank_key_function(settings, preferred_target, pooling)
    # One node before several, always: a replica spans nodes only when it must (or is asked to).
    return sorted(candidates, key=lambda c: (not c.feasible, c.nodes, key(c)))


def _explain_missing_pin(
    pin: str, candidates: Sequence[ScoredCandidate], pools: Sequence[GpuPool], settings: SelectionSettings
) -> str:
    parts = parse_profile_name(pin)
    if parts is None:
        return (
            f"profile {pin!r} does not follow <engine>-<gpu>-<precision>-tp<N>-<target> "
            "(e.g. vllm-h100-fp8-tp2-latency)"
        )
    if parts["engine"] not in settings.engines:
        return f"profile {pin!r}: engine {parts['engine']} is not enabled in the operator (enabled: {settings.engines})"
    shorts = sorted({p.gpu.short_name if p.gpu else CPU_POOL_KEY for p in pools})
    if parts["gpu"] not in shorts:
        return f"profile {pin!r}: no schedulable pool has GPU {parts['gpu']!r} (pools: {', '.join(shorts) or 'none'})"
    same_pool = [p for p in pools if (p.gpu.short_name if p.gpu else CPU_POOL_KEY) == parts["gpu"]]
    most = max(p.gpus_per_node for p in same_pool)
    if int(parts["tp"]) > max(most, 1):
        return f"profile {pin!r}: tp{parts['tp']} needs {parts['tp']} GPUs on one node, the largest {parts['gpu']} node has {most}"
    names = sorted({c.name for c in candidates if c.feasible})[:5]
    return f"profile {pin!r} is not a candidate for this model on these nodes; feasible ones include: {', '.join(names) or 'none'}"


def _failure(
    message: str,
    reasons: Iterable[str],
    ranked: Sequence[ScoredCandidate],
    scan: PoolScan,
    max_len: int | None = None,
) -> Selection:
    return Selection(
        profile=None,
        failure=NoCompatibleProfile(message, tuple(reasons)),
        pool=None,
        estimates=None,
        max_model_len=max_len,
        candidates=tuple(ranked),
        pools=scan.pools,
        excluded_nodes=scan.excluded,
    )


def pools_for_spec(
    nodes: Iterable[Mapping[str, Any]],
    spec: InferenceServiceSpec,
    settings: SelectionSettings | None = None,
    catalog: Mapping[str, GpuSpec] | None = None,
) -> PoolScan:
    """The pools a service may use: `gpu_pools` with the spec's nodeSelector and tolerations applied."""
    settings = settings or SelectionSettings()
    sched = spec.scheduling
    tolerations = (
        [t.model_dump(by_alias=True, exclude_none=True) for t in (sched.tolerations or [])] if sched else []
    )
    return gpu_pools(
        nodes,
        catalog,
        node_selector=sched.node_selector if sched else None,
        tolerations=tolerations,
        tolerated_taint_keys=settings.tolerated_taint_keys,
    )


def select_profile(
    facts: ModelFacts,
    nodes: Iterable[Mapping[str, Any]] | PoolScan,
    spec: InferenceServiceSpec,
    settings: SelectionSettings | None = None,
    *,
    catalog: Mapping[str, GpuSpec] | None = None,
    served_model_name: str | None = None,
    measured: Mapping[tuple[str, str], Measured] | None = None,
) -> Selection:
    """Select the serving profile for `facts` on `nodes` under `spec` and the operator's `settings`.

    nodes: Node objects as dicts, or a PoolScan from `pools_for_spec` (to group nodes once and
    reuse the scan across services; it is valid for every spec with the same `scheduling`).
    catalog: the GPU catalog (built-in plus the operator ConfigMap, see `catalog_from_config`).
    served_model_name: the name clients send when the spec sets none (e.g. the cache's model id);
    falls back to the ModelCache's name.
    measured: validation numbers by (profile name, pool key) for this model, used when the
    spec's selector says `rankBy: measured`.
    """
    settings = settings or SelectionSettings()
    scan = nodes if isinstance(nodes, PoolScan) else pools_for_spec(nodes, spec, settings, catalog)
    candidates, global_reasons = score_candidates(facts, scan.pools, spec, settings, catalog)
    preferred: Target = (
        spec.selector.optimize_for if spec.selector and spec.selector.optimize_for else "latency"
    )
    pooling = tasks.is_pooling(tasks.plan_task(facts, spec.serving.task).task)
    ranked = rank_candidates(candidates, settings, preferred, pooling)
    if measured and spec.selector is not None and spec.selector.rank_by == "measured":
        ranked = rank_by_measurements(ranked, measured, preferred)
    if global_reasons:
        return _failure(global_reasons[0], global_reasons, ranked, scan)
    if not scan.pools:
        reasons = [f"node {e.name}: {e.reason}" for e in scan.excluded] or ["no nodes"]
        return _failure(
            f"no schedulable node can serve a model ({len(scan.excluded)} nodes left out)",
            reasons,
            ranked,
            scan,
        )
    if spec.profile:
        same = [c for c in ranked if c.name == spec.profile]
        chosen = next((c for c in same if c.feasible), None)
        if chosen is None:
            if same:
                reasons = [f"{c.name} on {c.pool.key}: {c.reason}" for c in same]
                message = f"pinned profile {spec.profile} does not fit: {same[0].reason}"
            else:
                message = _explain_missing_pin(spec.profile, ranked, scan.pools, settings)
                reasons = [message]
            return _failure(message, reasons, ranked, scan)
        ordered = [chosen] + [c for c in ranked if c is not chosen]
    else:
        feasible = [c for c in ranked if c.feasible]
        if not feasible:
            reasons = [f"{c.name} on {c.pool.key}: {c.reason}" for c in ranked]
            reasons += [f"node {e.name}: {e.reason}" for e in scan.excluded]
            if not ranked:
                reasons.insert(0, f"no enabled engine can run on the pools {[p.key for p in scan.pools]}")
            closest = _closest(ranked)
            message = f"no profile fits on {len(scan.pools)} pools ({len(ranked)} candidates rejected)"
            would_fit = what_would_fit(facts, scan.pools, spec, settings, catalog)
            if would_fit:
                message += "; would fit: " + " or ".join(would_fit)
                reasons = [f"would fit: {w}" for w in would_fit] + reasons
            if closest is not None:
                message += f"; closest: {closest.name} on {closest.pool.key}: {closest.reason}"
            return _failure(message, reasons, ranked, scan)
        chosen = feasible[0]
        ordered = ranked
    return _build_selection(facts, chosen, ordered, spec, settings, scan, served_model_name)


# GPUs per node assumed for catalog GPUs the cluster does not have (HGX/DGX boards carry 8).
SUGGESTED_GPUS_PER_NODE = 8
MAX_SUGGESTED_NODES = 8


def _fits_on(
    facts: ModelFacts, gpu: GpuSpec, gpus_per_node: int, nodes: int, spec: InferenceServiceSpec,
    settings: SelectionSettings, precision: Precision,
) -> MemoryPlan | None:  # fmt: skip
    """The memory plan of tp=gpus_per_node x pp=nodes when it fits at the requested context, else None."""
    tp = gpus_per_node
    if facts.num_attention_heads % tp or nodes > facts.num_layers:
        return None
    length = spec.serving.max_model_len or facts.max_position_embeddings or DEFAULT_CONTEXT_TOKENS
    length = (
        min(length, max(settings.min_auto_model_len, 1)) if spec.serving.max_model_len is None else length
    )
    plan = plan_gpu_memory(
        facts, precision, tp, length, spec.serving.min_concurrency, gpu.memory_mib * MIB,
        spec.serving.gpu_memory_utilization, settings.extra_reserve_mib * MIB, pipeline_parallel_size=nodes,
    )  # fmt: skip
    return plan if plan.fits else None


def what_would_fit(
    facts: ModelFacts,
    pools: Sequence[GpuPool],
    spec: InferenceServiceSpec,
    settings: SelectionSettings,
    catalog: Mapping[str, GpuSpec] | None = None,
) -> list[str]:
    """When no single node fits: the fewest nodes of each pool's GPU (tp = GPUs per node x pp = nodes),
    and the smallest single 8-GPU node of a catalog GPU that would hold the model. The input for
    multi-node serving; the context is the pinned one, or the shortest selection would shrink to."""
    precisions = [p for p, _ in _gpu_precisions(facts)[0]]
    out: list[str] = []
    seen: set[str] = set()
    for pool in pools:
        gpu = pool.gpu
        if gpu is None or gpu.short_name in seen or pool.gpus_per_node < 1:
            continue
        seen.add(gpu.short_name)
        for nodes in range(2, MAX_SUGGESTED_NODES + 1):
            hit = next(
                ((p, plan) for p in precisions
                 if compat.support("vllm", p, gpu.compute_capability)[0]
                 and (plan := _fits_on(facts, gpu, pool.gpus_per_node, nodes, spec, settings, p)) is not None),
                None,
            )  # fmt: skip
            if hit is not None:
                precision, plan = hit
                name = profile_name(
                    "vllm", gpu.short_name, precision, pool.gpus_per_node, "throughput", nodes
                )
                out.append(
                    f"{nodes} nodes of {pool.gpus_per_node} x {gpu.display_name} "
                    f"(tp{pool.gpus_per_node} x pp{nodes}, {name}: {gib(plan.required_bytes_per_gpu)} of "
                    f"{gib(plan.available_bytes_per_gpu)} GiB per GPU)"
                )
                break
    cat = BUILTIN_CATALOG if catalog is None else catalog
    bigger = sorted(
        (g for g in cat.values() if g.mig_slice is None and g.short_name not in seen),
        key=lambda g: (g.memory_mib, g.short_name),
    )
    for gpu in bigger:
        fitting: Precision | None = next(
            (p for p in precisions if compat.support("vllm", p, gpu.compute_capability)[0]
             and _fits_on(facts, gpu, SUGGESTED_GPUS_PER_NODE, 1, spec, settings, p) is not None),
            None,
        )  # fmt: skip
        if fitting is not None:
            out.append(
                f"1 node of {SUGGESTED_GPUS_PER_NODE} x {gpu.display_name} (tp{SUGGESTED_GPUS_PER_NODE}, {fitting})"
            )
            break
    return out


def _closest(candidates: Sequence[ScoredCandidate]) -> ScoredCandidate | None:
    """The rejected candidate that came nearest to fitting in memory (for a one-line message).

    Candidates the user's own selector ruled out are not "close": naming one would hide the
    reason the allowed candidates failed.
    """
    allowed = [c for c in candidates if "not allowed by selector" not in c.reason] or list(candidates)
    with_memory = [c for c in allowed if c.memory is not None and c.memory.available_bytes_per_gpu > 0]
    if not with_memory:
        return allowed[0] if allowed else None
    return min(
        with_memory,
        key=lambda c: (
            c.memory.required_bytes_per_gpu / c.memory.available_bytes_per_gpu if c.memory else math.inf,
            c.name,
            c.pool.key,
        ),
    )


def _build_selection(
    facts: ModelFacts,
    chosen: ScoredCandidate,
    ordered: Sequence[ScoredCandidate],
    spec: InferenceServiceSpec,
    settings: SelectionSettings,
    scan: PoolScan,
    served_model_name: str | None,
) -> Selection:
    serving = spec.serving
    task = tasks.plan_task(facts, serving.task)
    pool = chosen.pool
    plan = chosen.memory
    assert plan is not None
    served = serving.served_model_name or served_model_name or spec.model_cache_ref.name
    gpu_bytes = pool.gpu.memory_mib * MIB if pool.gpu else pool.memory_bytes_per_node
    overhead = plan.overhead_bytes_per_gpu
    inputs = eng.LaunchInputs(
        engine=chosen.engine,
        model_dir=settings.model_dir,
        served_model_name=served,
        precision=chosen.precision,
        online_quantization=chosen.online_quantization,
        tensor_parallel_size=chosen.tensor_parallel_size,
        target=chosen.target,
        max_model_len=chosen.max_model_len,
        min_concurrency=serving.min_concurrency,
        gpu_memory_utilization=serving.gpu_memory_utilization,
        trtllm_kv_cache_free_fraction=eng.trtllm_kv_cache_free_fraction(
            gpu_bytes, serving.gpu_memory_utilization, plan.weight_bytes_per_gpu, overhead
        ),
        sglang_mem_fraction_static=eng.sglang_mem_fraction_static(
            gpu_bytes, serving.gpu_memory_utilization, overhead
        ),
        cpu_kv_cache_space_gib=eng.cpu_kv_cache_space_gib(plan.kv_required_bytes_per_gpu),
        extra_args=tuple(serving.extra_args),
        task=task.task,
        convert=task.convert,
        nodes=chosen.nodes,
    )
    info = eng.ENGINES[chosen.engine]
    gpu = pool.gpu
    required_total = (
        math.ceil(plan.required_bytes_per_gpu / serving.gpu_memory_utilization) if gpu is not None else 0
    )
    profile = ServingProfile(
        name=chosen.name,
        engine=chosen.engine,
        precision=chosen.precision,
        tensor_parallel_size=chosen.tensor_parallel_size,
        nodes=chosen.nodes,
        target=chosen.target,
        gpu_product=gpu.product if gpu else None,
        gpu_short_name=gpu.short_name if gpu else None,
        gpu_count=chosen.tensor_parallel_size if gpu else 0,
        required_gpu_memory_bytes=required_total,
        command=eng.engine_command(inputs),
        served_model_name=served,
        task=task.task,
        port=eng.listen_port(serving.extra_args, info.port),
        health_path=info.health_path,
        metrics_path=info.metrics_path,
    )
    tolerated = set(settings.tolerated_taint_keys)
    return Selection(
        profile=profile,
        failure=None,
        pool=pool,
        estimates=chosen.estimates(),
        max_model_len=chosen.max_model_len,
        candidates=tuple(ordered),
        node_selector=pool.node_selector(),
        node_affinity=pool.node_affinity(),
        tolerations=tuple(t.toleration() for t in pool.taints if t.key in tolerated),
        env=eng.engine_env(inputs),
        shm_size_bytes=eng.shm_size_bytes(chosen.engine, chosen.tensor_parallel_size),
        gpu_request=profile.gpu_count,
        readiness_path=info.readiness_path,
        memory_request_bytes=(
            eng.gpu_host_memory_request_bytes(chosen.engine, profile.gpu_count, chosen.tensor_parallel_size)
            if gpu is not None
            else plan.required_bytes_per_gpu
        ),
        pools=scan.pools,
        excluded_nodes=scan.excluded,
    )
