"""``minitron search``: its typed config, the dry run, and the search run.

The dry run plans the library and its costs from the config alone. The run trains
every sub-block variant by blockwise local distillation, scores every variant
(replace-1-block KL), solves the MIP under the budgets, realises each solution as a
nemotron-nas model, re-ranks them by their realised held-out KL and writes the best;
on several devices or nodes BLD and scoring run on every process, the rest on rank 0.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from minitron.config import DataConfig, Device, Dtype
from minitron.errors import MinitronError

DTYPE_BYTES = {"float8": 1, "bfloat16": 2, "float16": 2, "float32": 4}
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class AttentionSpaceConfig:
    """Attention variants of every layer.

    Attributes:
        kv_heads: K/V head counts (each must divide the heads).
        linear: Offer attention replaced by one linear map.
        no_op: Offer no attention at all.
    """

    kv_heads: list[int] = dataclasses.field(default_factory=lambda: [8, 4, 2, 1])
    linear: bool = True
    no_op: bool = True


@dataclasses.dataclass(frozen=True)
class FFNSpaceConfig:
    """FFN variants of every layer.

    Attributes:
        ffn_mult: Widths in the format's ``ffn_mult``.
        fractions: Widths as fractions of the parent's (rounded up to 256).
        linear: Offer the FFN replaced by one linear map.
        no_op: Offer no FFN at all.
    """

    ffn_mult: list[float] = dataclasses.field(default_factory=list)
    fractions: list[float] = dataclasses.field(
        default_factory=lambda: [1.0, 0.875, 0.75, 0.5, 0.25, 0.2, 0.1]
    )
    linear: bool = True
    no_op: bool = True


@dataclasses.dataclass(frozen=True)
class ConstraintsConfig:
    """Budgets of the search (any of them).

    Attributes:
        params: Most parameters of the result (counted as ``prune --dry-run`` does).
        memory_gib: Most GiB of weights in the serving dtype plus the KV cache of
            ``batch × seq_len`` tokens.
        throughput: Fewest prefill tokens per second at ``batch × seq_len``
            (``batch·seq_len / Σ prefill time``; needs ``runtime``).
        latency_ms: Most milliseconds of one decode step of ``batch`` sequences with
            ``seq_len`` tokens of context (``Σ decode time``; needs ``runtime``).
    """

    params: float | None = None
    memory_gib: float | None = None
    throughput: float | None = None
    latency_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Runtime costs of the variants (for ``throughput`` and ``latency_ms`` budgets).

    Attributes:
        method: ``measured`` (each variant timed on the run's device: a model of
            ``copies`` such blocks against an empty one, median of ``repeats``; not in a
            dry run), ``analytic`` (a roofline from FLOPs and bytes moved at the
            device's peaks; needs no weights and no device), or ``None`` (none).
        hardware: ``analytic``: peaks of a named device: ``h100``, ``h200``, ``a100``.
        peak_tflops: ``analytic``: dense peak TFLOP/s (overrides ``hardware``).
        bandwidth_gbs: ``analytic``: memory bandwidth in GB/s (overrides ``hardware``).
        repeats: ``measured``: timed runs per variant (the median is kept).
        copies: ``measured``: blocks in each timed model.
    """

    method: Literal["analytic", "measured"] | None = None
    hardware: str | None = "h100"
    peak_tflops: float | None = None
    bandwidth_gbs: float | None = None
    repeats: int = 5
    copies: int = 4


@dataclasses.dataclass(frozen=True)
class BLDSearchConfig:
    """Blockwise local distillation of every trainable sub-block variant before scoring.

    Attributes:
        enabled: Train the variants (off: score them as initialised).
        tokens: Training tokens each variant sees (read from ``data``'s calibration
            samples, cycled).
        lr: Peak AdamW learning rate (cosine decay to ``lr * min_lr_ratio``).
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        warmup: Linear warm-up steps.
        weight_decay: AdamW weight decay of matrices.
        grad_clip: Per-variant gradient-norm clip, or ``None``.
        checkpoint_every: Checkpoint every this many steps (``--resume`` continues).
        groups: Train the variants in this many groups of consecutive layers, one
            after another: ``1 / groups`` of the optimizer state at a time, for one
            more parent pass per step and group.
        seed: Seed of the run.
    """

    enabled: bool = True
    tokens: int = 10_000_000
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup: int = 0
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    checkpoint_every: int = 100
    groups: int = 1
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """``minitron search``: the Puzzle search over per-layer block variants.

    Attributes:
        parent: Model spec of the parent (Llama or nemotron-nas).
        attention: Attention variants.
        ffn: FFN variants.
        serve_with: Leave out block kinds this engine cannot serve.
        batch: Sequences served at once (memory and runtime costs).
        seq_len: Tokens per sequence (memory and runtime costs).
        serving_dtype: Weight and KV-cache dtype when served.
        constraints: The budgets.
        runtime: How runtime costs are computed.
        solutions: Distinct solutions of the MIP.
        max_shared: Most layer choices a solution shares with each earlier one.
        time_limit: Seconds per MIP solve.
        bld: Blockwise local distillation of the variants.
        compare: Also run the baselines at the same budget: depth pruning (layers
            dropped by BI) and this search without BLD; their held-out KL and
            perplexity go into ``search.json``.
        data: Calibration text (initialising and training variants) and held-out
            text (BLD's held-out NMSE, scores, KL).
        ridge: Ridge strength of the least-squares fits of linear variants.
        dtype: Compute dtype.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (``cuda:N`` only on one device).
        devices: Processes per node, one per GPU (or CPU processes): BLD trains
            data-parallel (DDP), the scoring stages split the held-out batches.
        num_nodes: Nodes (torchrun or SLURM start the processes of each).
        output: Output folder.
        trust_remote_code: Allow a Hub model's own code to run.
    """

    parent: str
    attention: AttentionSpaceConfig = dataclasses.field(default_factory=AttentionSpaceConfig)
    ffn: FFNSpaceConfig = dataclasses.field(default_factory=FFNSpaceConfig)
    serve_with: Literal["vllm", "trtllm", "llamacpp"] | None = None
    batch: int = 1
    seq_len: int = 4096
    serving_dtype: Literal["float8", "bfloat16", "float16", "float32"] = "bfloat16"
    constraints: ConstraintsConfig = dataclasses.field(default_factory=ConstraintsConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    solutions: int = 1
    max_shared: int | None = None
    time_limit: float = 60.0
    bld: BLDSearchConfig = dataclasses.field(default_factory=BLDSearchConfig)
    compare: bool = False
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    ridge: float = 1e-2
    dtype: Dtype = "auto"
    device: Device = "auto"
    devices: int = 1
    num_nodes: int = 1
    output: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for key in ("batch", "seq_len", "solutions", "devices", "num_nodes"):
            if getattr(self, key) < 1:
                raise MinitronError(f"{key} must be at least 1 (got {getattr(self, key)})")
        for key in ("tokens", "checkpoint_every", "groups"):
            if getattr(self.bld, key) < 1:
                raise MinitronError(f"bld.{key} must be at least 1 (got {getattr(self.bld, key)})")
        for key, value in dataclasses.asdict(self.constraints).items():
            if value is not None and not value > 0:
                raise MinitronError(f"constraints.{key} must be above 0 (got {value})")
        timed = [k for k in ("throughput", "latency_ms") if getattr(self.constraints, k)]
        if timed and self.runtime.method is None:
            raise MinitronError(
                f"constraints.{timed[0]} needs runtime costs: set runtime.method: analytic"
            )
        if self.devices * self.num_nodes > 1 and self.device.startswith("cuda:"):
            raise MinitronError(
                f"device {self.device} names one GPU: use device: cuda with devices: {self.devices}"
            )

    @property
    def accelerator(self) -> str:
        """Lightning's accelerator for ``device``."""
        import torch

        cuda = self.device.startswith("cuda") or (
            self.device == "auto" and torch.cuda.is_available()
        )
        return "gpu" if cuda else "cpu"


def plan_library(config: SearchConfig) -> tuple[Any, Any]:
    """The parent as nemotron-nas and its library (from the config alone)."""
    from minitron.io import load_config
    from minitron.modeling import DeciLMConfig, nas_config_from_llama
    from minitron.search.library import AttentionSpace, FFNSpace, build_library

    parent = load_config(config.parent, config.trust_remote_code)
    base = parent if isinstance(parent, DeciLMConfig) else nas_config_from_llama(parent)
    attention = AttentionSpace(tuple(config.attention.kv_heads), config.attention.linear,
                               config.attention.no_op)  # fmt: skip
    ffn = FFNSpace(tuple(config.ffn.ffn_mult), tuple(config.ffn.fractions), config.ffn.linear,
                   config.ffn.no_op)  # fmt: skip
    return base, build_library(base, attention, ffn, config.serve_with)


def library_record(config: SearchConfig, planned: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """``library.json`` of the dry run (scores null), budgets checked; ``planned`` is
    ``plan_library(config)`` when the caller has it already.

    Raises:
        MinitronError: A bad space or engine, or a budget no choice meets.
    """
    from minitron.search.costs import block_cost, non_layer_params
    from minitron.search.runtime import block_runtime_ms, head_runtime_ms, peaks_for

    base, library = planned or plan_library(config)
    size = DTYPE_BYTES[config.serving_dtype]
    peaks = None
    if config.runtime.method == "analytic":
        rt = config.runtime
        peaks = peaks_for(rt.hardware, rt.peak_tflops, rt.bandwidth_gbs)
    layers = []
    for i, blocks in enumerate(library.layers):
        variants = []
        for block in blocks:
            cost = block_cost(base, block, config.batch, config.seq_len, size)
            runtime = None
            if peaks is not None:
                runtime = block_runtime_ms(base, block, config.batch, config.seq_len, size, peaks)
            variants.append({
                "attention": block.attention.to_dict(), "ffn": block.ffn.to_dict(),
                "params": cost.params, "kv_bytes_per_token": cost.kv_bytes_per_token,
                "memory_bytes": cost.memory_bytes, "runtime_ms": runtime, "score": None,
            })  # fmt: skip
        layers.append({"layer": i, "variants": variants})
    outside = non_layer_params(base)
    record = {
        "parent": config.parent,
        "non_layer_params": outside,
        "non_layer_runtime_ms": None
        if peaks is None
        else dict.fromkeys(("prefill", "decode"), head_runtime_ms(base, config.batch, size, peaks)),
        "parent_params": outside
        + sum(block_cost(base, b, 1, 1, size).params for b in base.block_configs),
        "constraints": dataclasses.asdict(config.constraints),
        "runtime": dataclasses.asdict(config.runtime),
        "batch": config.batch,
        "seq_len": config.seq_len,
        "serving_dtype": config.serving_dtype,
        "layers": layers,
    }
    check_budgets(config, record)
    return record


def check_budgets(config: SearchConfig, record: dict[str, Any]) -> None:
    """Record the smallest (fastest) choice; refuse a budget no choice meets.

    Runtime budgets are checked once runtimes are known (a measured run's are not in a
    dry run).
    """
    from minitron.search.mip import smallest

    costs, offsets, limits = budgets(config, record)
    least = {name: smallest(rows, offsets[name]) for name, rows in costs.items()}
    record["smallest"] = {"params": least["params"], "memory_gib": least["memory_bytes"] / GIB}
    if "prefill_ms" in least:
        record["smallest"]["prefill_ms"] = least["prefill_ms"]
        record["smallest"]["decode_ms"] = least["decode_ms"]
    for name, limit in limits.items():
        if name in least and least[name] > limit:
            raise MinitronError(_infeasible(config, name, least[name]))


def measure_library(config: SearchConfig, record: dict[str, Any], base, library, device) -> None:
    """Fill ``runtime_ms`` of every variant (and outside the layers) by timing on ``device``."""
    import torch

    from minitron.search.measure import measure_runtimes

    dtype = {"float32": torch.float32, "float16": torch.float16}.get(
        config.serving_dtype, torch.bfloat16
    )  # float8 is timed in bf16: a stock forward has no fp8 matmuls
    flat = [b for blocks in library.layers for b in blocks]
    times, outside = measure_runtimes(
        base, flat, config.batch, config.seq_len, dtype, device,
        config.runtime.repeats, config.runtime.copies,
    )  # fmt: skip
    it = iter(times)
    for layer in record["layers"]:
        for variant in layer["variants"]:
            variant["runtime_ms"] = next(it)
    record["non_layer_runtime_ms"] = outside
    check_budgets(config, record)


def budgets(config: SearchConfig, library_json: dict[str, Any]):
    """The MIP's cost rows, offsets (outside the layers) and limits, by cost name.

    ``throughput`` becomes a limit on the summed prefill time
    (``batch·seq_len / throughput``), ``latency_ms`` one on the summed decode time.
    """
    size = DTYPE_BYTES[config.serving_dtype]
    outside = library_json["non_layer_params"]
    layers = library_json["layers"]
    costs = {
        "params": [[v["params"] for v in e["variants"]] for e in layers],
        "memory_bytes": [[v["memory_bytes"] for v in e["variants"]] for e in layers],
    }
    offsets = {"params": outside, "memory_bytes": outside * size}
    if library_json.get("non_layer_runtime_ms") is not None:
        for phase in ("prefill", "decode"):
            costs[f"{phase}_ms"] = [[v["runtime_ms"][phase] for v in e["variants"]] for e in layers]
            offsets[f"{phase}_ms"] = library_json["non_layer_runtime_ms"][phase]
    c = config.constraints
    limits = {}
    if c.params is not None:
        limits["params"] = c.params
    if c.memory_gib is not None:
        limits["memory_bytes"] = c.memory_gib * GIB
    if c.throughput is not None:
        limits["prefill_ms"] = 1000.0 * config.batch * config.seq_len / c.throughput
    if c.latency_ms is not None:
        limits["decode_ms"] = c.latency_ms
    return costs, offsets, limits


def _infeasible(config: SearchConfig, name: str, least: float) -> str:
    c = config.constraints
    if name == "prefill_ms":
        best = 1000.0 * config.batch * config.seq_len / least
        return (f"throughput budget {c.throughput:,.6g} tokens/s is infeasible: the fastest "
                f"choice reaches {best:,.6g}")  # fmt: skip
    if name == "decode_ms":
        return (f"latency_ms budget {c.latency_ms:,.6g} is infeasible: the fastest choice "
                f"needs {least:,.6g}")  # fmt: skip
    if name == "memory_bytes":
        return (f"memory_gib budget {c.memory_gib:,.6g} is infeasible: the smallest choice "
                f"needs {least / GIB:,.6g}")  # fmt: skip
    return (f"params budget {c.params:,.6g} is infeasible: the smallest choice needs "
            f"{least:,.6g}")  # fmt: skip


def run_search(
    config: SearchConfig,
    output: Any,
    overwrite: bool = False,
    resume: bool = False,
    solution: int | None = None,
) -> dict[str, Any] | None:
    """BLD, scores, the MIP, realised and re-ranked solutions; write the best.

    Stages run in order, each one's result kept in ``<output>.work`` so ``resume``
    continues at the stage (and the BLD step) a run stopped in. Writes
    ``library.json`` (every variant with its costs, scores and BLD's held-out NMSE),
    ``search.json`` (the solutions, best first, with summed and realised scores, and
    the baselines with ``compare``), ``blocks.yaml`` (a ``minitron prune`` recipe of
    the best) and ``model/`` (the best, a nemotron-nas checkpoint) into a temporary
    folder renamed when done. ``solution=K`` writes the MIP's ``K``-th solution (0 =
    the best summed score) instead of the best realised one.

    With ``devices`` or ``num_nodes`` above 1 the processes start here; BLD and the
    scoring stages run on all of them, the rest on rank 0, which alone returns the
    record (the others return ``None``).
    """
    import shutil
    from pathlib import Path

    from minitron.config import config_to_dict
    from minitron.io import check_output_dir
    from minitron.search import stages
    from minitron.search.ranks import launch

    output = check_output_dir(output, overwrite, protect=[config.parent])
    if solution is not None and not 0 <= solution < config.solutions:
        raise MinitronError(
            f"--solution {solution}: the recipe asks for {config.solutions} solution(s), "
            f"numbered 0..{config.solutions - 1}"
        )
    base, library = plan_library(config)
    library_json = library_record(config, (base, library))  # budgets checked before weights
    recipe = {k: v for k, v in config_to_dict(config).items() if k != "output"}
    run = {"recipe": recipe, "parent_blocks": [b.to_dict() for b in base.block_configs]}
    ranks = launch(config.accelerator, config.devices, config.num_nodes)
    work = ranks.on_zero(stages.open_work, Path(output), run, resume, overwrite)
    try:
        return _run_stages(config, output, overwrite, resume, work, library_json, base, library,
                           solution, ranks)  # fmt: skip
    except MinitronError:
        if ranks.zero and not resume and not [p for p in work.iterdir() if p.name != "run.json"]:
            shutil.rmtree(work, ignore_errors=True)  # a bad request leaves nothing behind
        raise


def _run_stages(config, output, overwrite, resume, work, library_json, base, library, solution,
                ranks):  # fmt: skip
    """The stages after the checks: weights, BLD, scores (all ranks), then on rank 0 the
    MIP, realising and writing."""
    import math
    import time
    from pathlib import Path

    import yaml

    from minitron import __version__
    from minitron.config import config_to_dict
    from minitron.data import batches, load_text_data
    from minitron.eval.perplexity import perplexity
    from minitron.io import atomic_output_dir, load_model
    from minitron.modeling import DeciLMConfig, llama_to_nas
    from minitron.plots import plot_search_frontier
    from minitron.search.bld import BLDOptions, TrainedBlocks, train_blocks
    from minitron.search.mip import solve, sweep
    from minitron.search.realise import depth_baseline, realise
    from minitron.search.variants import gather_statistics

    device = config.device
    if ranks.world > 1:
        device = f"cuda:{ranks.local_rank}" if config.accelerator == "gpu" else "cpu"
    model, tokenizer = load_model(config.parent, config.dtype, device, config.trust_remote_code)
    parent = model if isinstance(model.config, DeciLMConfig) else llama_to_nas(model).eval()
    if config.runtime.method == "measured":  # rank 0's device; the others wait a little
        ranks.on_zero(measure_library, config, library_json, base, library,
                      next(parent.parameters()).device)  # fmt: skip
    data = load_text_data(config.data, tokenizer)
    calibration = batches(data.calibration, config.data.batch_size)
    heldout = batches(data.heldout, config.data.batch_size)
    if not heldout:
        raise MinitronError("search needs held-out text to score variants (data.heldout)")
    if config.bld.enabled and len(calibration) < ranks.world:
        raise MinitronError(
            f"BLD on {ranks.world} processes needs at least {ranks.world} calibration batches "
            f"(data.samples / data.batch_size gives {len(calibration)})"
        )
    passes = gather_statistics(parent, library, calibration, config.ridge)
    timings: dict[str, float] = {}
    trained, bld_record = None, None
    if config.bld.enabled:
        start = time.perf_counter()
        trained = TrainedBlocks.load(work / "bld")
        steps = math.ceil(config.bld.tokens / max(calibration[0].numel() * ranks.world, 1))
        if trained is None:
            options = BLDOptions(
                steps=steps, lr=config.bld.lr, min_lr_ratio=config.bld.min_lr_ratio,
                warmup=math.ceil(config.bld.warmup / ranks.world),
                weight_decay=config.bld.weight_decay,
                grad_clip=config.bld.grad_clip, seed=config.bld.seed,
            )  # fmt: skip
            trainer_options = {"checkpoint_every": config.bld.checkpoint_every}
            if ranks.world > 1:
                from lightning.pytorch.strategies import DDPStrategy

                trainer_options |= {  # gradients live in DDP's buckets: no second copy
                    "strategy": DDPStrategy(gradient_as_bucket_view=True),
                    "accelerator": config.accelerator,
                    "devices": config.devices, "num_nodes": config.num_nodes,
                }  # fmt: skip
            trained = train_blocks(
                parent, library, passes, calibration, heldout, options, work / "bld",
                resume=resume, trainer_options=trainer_options, groups=config.bld.groups,
                ranks=ranks,
            )  # fmt: skip
            ranks.on_zero(_save_bld, trained, work / "bld")
        timings["bld_s"] = time.perf_counter() - start
        bld_record = {
            "steps": steps,
            "processes": ranks.world,
            "tokens_per_variant": steps * calibration[0].numel() * ranks.world,
            "kept_initial": sum(r.get("kept") == "initial" for r in trained.record),
            "variants": len(trained.record),
            "mean_nmse_init": _mean(r["nmse_init"] for r in trained.record),
            "mean_nmse_trained": _mean(r["nmse_trained"] for r in trained.record),
            "mean_nmse_kept": _mean(min(r["nmse_init"], r["nmse_trained"]) for r in trained.record),
        }
    start = time.perf_counter()
    scores = _scores(work / "scores.json", parent, library, heldout, passes, ranks, trained)
    timings["scores_s"] = time.perf_counter() - start
    untrained = None
    if config.compare and trained is not None:
        untrained = _scores(work / "scores-untrained.json", parent, library, heldout, passes,
                            ranks)  # fmt: skip
    if not ranks.zero:
        return None  # rank 0 solves, realises and writes
    _fill_library(library_json, scores, trained)
    start = time.perf_counter()
    costs, offsets, limits = budgets(config, library_json)
    mip = (costs, limits, offsets, config.solutions, config.max_shared, config.time_limit)
    found, solver = solve(scores.kl, *mip)
    realised = realise(parent, library, found, passes, trained, heldout)
    timings["mip_and_realise_s"] = time.perf_counter() - start
    solutions, child = realised.solutions, realised.model
    chosen = solutions[0]
    if solution is not None:
        from minitron.modeling import BlockConfig
        from minitron.search.realise import assemble

        picked = [e for e in solutions if e["rank_by_summed_score"] == solution]
        if not picked:
            raise MinitronError(f"--solution {solution}: the MIP found {len(solutions)} only")
        chosen = picked[0]
        blocks = [BlockConfig.from_dict(b) for b in chosen["block_configs"]]
        child = assemble(parent, blocks, passes, trained)
    record = {
        "parent": config.parent,
        "constraints": dataclasses.asdict(config.constraints),
        "non_layer_params": library_json["non_layer_params"],
        "parent_params": library_json["parent_params"],
        "parent_perplexity": perplexity(parent, heldout),
        "solutions": solutions,
        "rank_correlation": _spearman(
            [e["score"] for e in solutions], [e["realised_kl"] for e in solutions]
        ),  # fmt: skip
        "solver": solver.to_dict(),
        "scores": {
            "metric": "replace-1-block KL(parent || swapped), nats per token",
            "trained": trained is not None,
            "tokens": scores.tokens,
            "parent_lm_loss": scores.parent_lm_loss,
        },  # fmt: skip
        "bld": bld_record,
        "timings": timings,
        "written_solution": chosen["rank_by_summed_score"],
        "recipe": config_to_dict(config),
        "minitron_version": __version__,
    }
    if config.compare:
        baselines = {}
        if untrained is not None:
            found_u, _ = solve(untrained.kl, *mip)
            best_u = realise(parent, library, found_u, passes, None, heldout).solutions[0]
            baselines["search_without_bld"] = {
                k: best_u[k] for k in ("params", "score", "realised_kl", "realised_perplexity")
            }
        parent_layers = [
            {"params": layer["variants"][i]["params"],
             "memory_bytes": layer["variants"][i]["memory_bytes"]}
            for layer, i in zip(library_json["layers"], _parent_indices(library), strict=True)
        ]  # fmt: skip
        baselines["depth_pruning"] = depth_baseline(
            parent, parent_layers, offsets, limits, calibration, heldout
        )
        record["baselines"] = baselines
    record["frontier"] = sweep(scores.kl, costs, offsets, "params")
    prune_recipe = {"parent": config.parent, "block_configs": chosen["block_configs"]}
    with atomic_output_dir(output, overwrite) as tmp:
        (tmp / "library.json").write_text(json.dumps(library_json) + "\n")
        (tmp / "search.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "blocks.yaml").write_text(
            "# minitron prune blocks.yaml  (the best solution of minitron search)\n"
            + yaml.safe_dump(prune_recipe, sort_keys=False)
        )
        plot_search_frontier(record["frontier"], chosen, tmp / "frontier.png",
                             f"minitron search on {config.parent}")  # fmt: skip
        child.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "model" / "prune.json").write_text(json.dumps({
            "parent": config.parent, "params_before": library_json["parent_params"],
            "params_after": chosen["params"], "layers_before": len(library.layers),
            "layers_after": len(library.layers), "search": str(Path(output) / "search.json"),
        }, indent=2) + "\n")  # fmt: skip
    return record | {"output": str(output)}


def _save_bld(trained, folder) -> None:
    """BLD's result, and its superseded checkpoints removed."""
    import shutil

    trained.save(folder)
    for group in [folder, *folder.glob("group-*")]:
        shutil.rmtree(group / "checkpoints", ignore_errors=True)


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _scores(path, parent, library, heldout, passes, ranks, trained=None):
    """A finished scoring stage from disk, or the scores computed (by every rank, each on
    its share of the held-out batches) and saved (by rank 0)."""
    from minitron.search import stages
    from minitron.search.scores import replace_one_block_scores

    found = stages.load_scores(path)
    if found is None:
        found = replace_one_block_scores(
            parent, library, None, heldout, passes=passes, trained=trained, ranks=ranks
        )
        ranks.on_zero(stages.save_scores, path, found)
    return found


def _fill_library(library_json: dict[str, Any], scores, trained) -> None:
    """Scores, and BLD's held-out NMSE of each sub-block, into ``library.json``'s variants."""
    nmse = {}
    for entry in trained.record if trained is not None else []:
        nmse[entry["layer"], entry["sub_block"], json.dumps(entry["config"], sort_keys=True)] = {
            "nmse_init": entry["nmse_init"], "nmse_trained": entry["nmse_trained"],
            "kept": entry.get("kept", "trained"),
        }  # fmt: skip
    for layer, entry in enumerate(library_json["layers"]):
        for v, variant in enumerate(entry["variants"]):
            variant["score"] = scores.kl[layer][v]
            variant["lm_loss"] = scores.lm_loss[layer][v]
            variant["agreement"] = scores.agreement[layer][v]
            if trained is not None:
                variant["bld"] = {
                    half: nmse.get((layer, half, json.dumps(variant[half], sort_keys=True)))
                    for half in ("attention", "ffn")
                }


def _parent_indices(library) -> list[int]:
    """Each layer's index of the parent's own block in the library."""
    from minitron.search.library import find_block

    found = [find_block(b, library.parent.block_configs[i]) for i, b in enumerate(library.layers)]
    if any(i is None for i in found):
        raise MinitronError("compare: the library lacks the parent's own block in some layer")
    return found


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation of the summed and the realised scores (``None`` below 3 solutions)."""
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
