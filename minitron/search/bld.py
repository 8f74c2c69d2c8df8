"""Blockwise local distillation (BLD) of a search library's sub-block variants.

Each trainable sub-block variant (an attention with fewer K/V heads or a linear map;
a narrower FFN or a linear map) learns to reproduce its parent block's output from the
parent's input, with the loss ``‖o_child − o_parent‖² / ‖o_parent‖²`` (normalised
MSE over the batch's residual stream leaving the layer). Decoupled as in Puzzle: an
attention variant trains inside a layer whose FFN is the parent's (frozen; gradients
pass through it), an FFN variant reads the parent's own attention output. The parent
runs once per batch and its activations feed every variant of every layer, so a step
costs one parent forward plus one forward and backward of each variant.

The parent's own sub-blocks and ``no_op`` ones have nothing to train, and a linear FFN
is already at the optimum of this loss (a least-squares fit on the same inputs). The variants
are independent, so one AdamW over all of them with the summed loss takes exactly the
per-variant steps; gradient clipping is per variant. Training runs in a Lightning
module (one device or many), checkpointed and resumable like ``minitron distill``.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from minitron.layers import decoder_layers, trace
from minitron.modeling import BlockConfig
from minitron.search.library import Library
from minitron.search.ranks import Ranks
from minitron.search.variants import swapped_layer

#: The modules of each half of a DeciLMDecoderLayer.
HALVES = {"attention": ("input_layernorm", "self_attn"), "ffn": ("post_attention_layernorm", "mlp")}
#: Layer keywords the sub-blocks take from a trace (no cache while training).
_NO_CACHE = ("past_key_values", "cache", "use_cache")


@dataclass(frozen=True)
class SubVariant:
    """One trainable sub-block: ``half`` (attention / ffn) of ``layer`` set to ``config``."""

    layer: int
    half: str
    config: Any  # AttentionConfig or FFNConfig

    @property
    def key(self) -> str:
        """A stable name (module keys and safetensors prefixes)."""
        return f"l{self.layer}_{self.half}_{_slug(self.config.to_dict())}"

    def block(self, parent: BlockConfig) -> BlockConfig:
        """The parent's block with this half replaced."""
        if self.half == "attention":
            return BlockConfig(self.config, parent.ffn)
        return BlockConfig(parent.attention, self.config)


def _slug(config: dict[str, Any]) -> str:
    if config.get("replace_with_linear"):
        return "linear"
    if "n_heads_in_group" in config and config["n_heads_in_group"] is not None:
        return f"g{config['n_heads_in_group']}"
    return "mult" + f"{config.get('ffn_mult')}".replace(".", "p")


def trainable_variants(library: Library) -> list[SubVariant]:
    """Every sub-block of the library that BLD trains: not the parent's, not ``no_op``, and
    not a linear FFN (its least-squares initialisation already minimises BLD's loss on
    the calibration tokens: the FFN's input is the parent's, and the layer's output is
    that input plus the linear map, so the NMSE is the fit's own residual)."""
    parents = library.parent.block_configs
    found: dict[str, SubVariant] = {}
    for layer, blocks in enumerate(library.layers):
        for block in blocks:
            for half, sub, own in (
                ("attention", block.attention, parents[layer].attention),
                ("ffn", block.ffn, parents[layer].ffn),
            ):
                closed_form = half == "ffn" and sub.kind == "linear"
                if sub != own and sub.kind != "no_op" and not closed_form:
                    variant = SubVariant(layer, half, sub)
                    found.setdefault(variant.key, variant)
    return list(found.values())


@dataclass
class TrainedBlocks:
    """Trained sub-block weights by variant key, with each variant's held-out NMSE."""

    weights: dict[str, dict[str, torch.Tensor]]
    record: list[dict[str, Any]]

    def load_into(self, layer_module: nn.Module, layer: int, block: BlockConfig,
                  parent: BlockConfig) -> None:  # fmt: skip
        """Overwrite the sub-blocks of an initialised ``layer_module`` with trained ones."""
        for half, sub, own in (("attention", block.attention, parent.attention),
                               ("ffn", block.ffn, parent.ffn)):  # fmt: skip
            if sub == own or sub.kind == "no_op":
                continue
            state = self.weights.get(SubVariant(layer, half, sub).key)
            if state is None:
                continue
            with torch.no_grad():
                for name, value in state.items():
                    target = layer_module.get_parameter(name)
                    target.copy_(value.to(target.dtype))

    def save(self, folder: Path) -> None:
        """``subblocks.safetensors`` and ``bld.json`` in ``folder`` (each written atomically)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        flat = {
            f"{key}/{name}": value.detach().cpu().contiguous()
            for key, state in self.weights.items()
            for name, value in state.items()
        }
        tmp = folder / ".subblocks.safetensors.tmp"
        save_file(flat, str(tmp))
        tmp.replace(folder / "subblocks.safetensors")
        tmp = folder / ".bld.json.tmp"
        tmp.write_text(json.dumps({"variants": self.record}, indent=1) + "\n")
        tmp.replace(folder / "bld.json")

    @classmethod
    def load(cls, folder: Path) -> TrainedBlocks | None:
        """What ``save`` wrote, or ``None`` when the stage is not complete."""
        from safetensors.torch import load_file

        if not (folder / "bld.json").is_file() or not (folder / "subblocks.safetensors").is_file():
            return None
        weights: dict[str, dict[str, torch.Tensor]] = {}
        for flat, value in load_file(str(folder / "subblocks.safetensors")).items():
            key, name = flat.split("/", 1)
            weights.setdefault(key, {})[name] = value
        return cls(weights, json.loads((folder / "bld.json").read_text())["variants"])


def build_students(model: nn.Module, variants: Sequence[SubVariant], passes) -> list[nn.Module]:
    """One initialised layer per variant; its other half is the parent's own (shared) modules."""
    layers = decoder_layers(model)
    students = []
    for variant in variants:
        parent_block = model.config.block_configs[variant.layer]
        student = swapped_layer(model, variant.layer, variant.block(parent_block), passes)
        other = "ffn" if variant.half == "attention" else "attention"
        for name in HALVES[other]:
            if hasattr(layers[variant.layer], name):
                setattr(student, name, getattr(layers[variant.layer], name))
        students.append(student)
    return students


def _teacher(model: nn.Module, ids: torch.Tensor, layers_needed: set[int]):
    """The parent's residual stream, each layer's arguments, and the mid-layer states
    (after attention) of ``layers_needed``."""
    traced = trace(model, ids)
    layers = decoder_layers(model)
    mid = {}
    with torch.no_grad():
        for layer in layers_needed:
            kwargs = {k: v for k, v in traced.layer_kwargs[layer].items() if k not in _NO_CACHE}
            mid[layer] = layers[layer].attend(traced.hidden[layer], **kwargs)
    return traced, mid


def _outputs(student: nn.Module, variant: SubVariant, traced, mid) -> torch.Tensor:
    if variant.half == "ffn":
        return student.feed_forward(mid[variant.layer])
    kwargs = traced.layer_kwargs[variant.layer]
    return student(traced.hidden[variant.layer], **kwargs)


def nmse_terms(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(‖out − target‖², ‖target‖²)`` summed over the batch, in float32."""
    out, target = out.float(), target.float()
    return (out - target).pow(2).sum(), target.pow(2).sum()


@torch.no_grad()
def heldout_nmse(model: nn.Module, variants: Sequence[SubVariant], students, heldout,
                 ranks: Ranks | None = None) -> list:  # fmt: skip
    """Each variant's normalised MSE over all held-out batches (summed errors / summed norms);
    with ``ranks``, each process reads its share of the batches."""
    ranks = ranks or Ranks()
    device = next(model.parameters()).device
    needed = {v.layer for v in variants if v.half == "ffn"}
    errors = [0.0] * len(variants)
    norms = [0.0] * len(variants)
    for ids in ranks.shard(heldout):
        traced, mid = _teacher(model, ids.to(device), needed)
        for i, (variant, student) in enumerate(zip(variants, students, strict=True)):
            out = _outputs(student, variant, traced, mid)
            err, norm = nmse_terms(out, traced.hidden[variant.layer + 1])
            errors[i] += err.item()
            norms[i] += norm.item()
    summed = ranks.sum([*errors, *norms], device)
    errors, norms = summed[: len(variants)], summed[len(variants) :]
    return [e / n for e, n in zip(errors, norms, strict=True)]


@dataclass(frozen=True)
class BLDOptions:
    """The optimiser of BLD (Model-Optimizer's Puzzle branch: AdamW 1e-4, cosine, wd 0.1)."""

    steps: int
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    seed: int = 0


class BLDModule(L.LightningModule):
    """Trains every sub-block variant of a library at once from one parent pass a step.

    The parent is frozen and not registered (not in checkpoints); the trainable halves
    are, as ``students.<key>.<module>``. Step ``s`` on rank ``r`` of ``w`` reads
    calibration batch ``(s·w + r) mod n``, so a resumed run reads what an
    uninterrupted one would.
    """

    def __init__(self, parent: nn.Module, variants: Sequence[SubVariant], students,
                 batches: Sequence[torch.Tensor], options: BLDOptions):  # fmt: skip
        super().__init__()
        object.__setattr__(self, "parent", parent)
        self.variants = list(variants)
        self.layers = list(students)
        self.students = nn.ModuleDict()
        for variant, student in zip(self.variants, self.layers, strict=True):
            halves = nn.ModuleDict()
            for name in HALVES[variant.half]:
                if hasattr(student, name):
                    module = getattr(student, name).float()
                    module.requires_grad_(True)
                    halves[name] = module
            self.students[variant.key] = halves
        self.batches = list(batches)
        self.options = options
        self.needed = {v.layer for v in self.variants if v.half == "ffn"}
        self.layout = _Layout()
        parent.requires_grad_(False)

    def on_fit_start(self) -> None:
        self.parent.to(self.device)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(range(self.options.steps), batch_size=1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        ids = self.batches[(self.global_step * world + rank) % len(self.batches)].to(self.device)
        traced, mid = _teacher(self.parent, ids, self.needed)
        total = torch.zeros((), device=self.device)
        for variant, student in zip(self.variants, self.layers, strict=True):
            out = _outputs(student, variant, traced, mid)
            err, norm = nmse_terms(out, traced.hidden[variant.layer + 1])
            total = total + err / norm
        mean = total.detach() / max(len(self.variants), 1)
        self.log("nmse", mean, prog_bar=True)
        return total

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:  # fmt: skip
        """Each variant's gradient clipped on its own (they are separate models)."""
        if self.options.grad_clip is None:
            return
        for halves in self.students.values():
            torch.nn.utils.clip_grad_norm_(halves.parameters(), self.options.grad_clip)

    def configure_optimizers(self):
        opts = self.options
        decay = [p for n, p in self.students.named_parameters() if p.ndim >= 2]
        rest = [p for n, p in self.students.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opts.weight_decay},
             {"params": rest, "weight_decay": 0.0}],
            lr=opts.lr, betas=opts.betas,
        )  # fmt: skip
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(opts))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_end(self) -> None:
        """Free AdamW's moments and the last gradients once the steps are done (after
        the last checkpoint), before Lightning moves the module to the CPU: only the
        trained weights are used after."""
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()
        self.students.zero_grad(set_to_none=True)

    def trained(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each variant's trained parameters, by the layer's own parameter names."""
        return {
            key: {name: p.detach().cpu().clone() for name, p in halves.named_parameters()}
            for key, halves in self.students.items()
        }


@dataclass
class _Layout:
    """What minitron's step callbacks read (BLD takes one batch per optimizer step)."""

    accumulation: int = 1


def _cosine(opts: BLDOptions):
    def factor(step: int) -> float:
        if step < opts.warmup:
            return (step + 1) / opts.warmup
        span = max(opts.steps - opts.warmup, 1)
        progress = min((step - opts.warmup) / span, 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * cosine

    return factor


def train_blocks(
    model: nn.Module,
    library: Library,
    passes: dict[str, Any],
    batches: Sequence[torch.Tensor],
    heldout: Sequence[torch.Tensor],
    options: BLDOptions,
    work: Path,
    resume: bool = False,
    trainer_options: dict[str, Any] | None = None,
    groups: int = 1,
    ranks: Ranks | None = None,
) -> TrainedBlocks:
    """Train every sub-block variant of ``library`` by BLD; record held-out NMSE before/after.

    With ``groups > 1`` the variants are trained in that many groups of consecutive
    layers, one after another (each with its own parent passes), so the optimizer state
    held at once is ``1 / groups`` of the whole. Each group's checkpoints go to
    ``work/group-<g>/checkpoints`` and its result to ``work/group-<g>``; ``resume``
    skips finished groups and continues the interrupted one. ``model`` (the parent) is
    not changed. With ``ranks`` (and a ``ddp`` strategy in ``trainer_options``) every
    process trains all variants on its own batches, gradients averaged, and reads its
    share of the held-out batches; only rank 0 writes.

    A variant whose held-out NMSE after training is above its initialisation's keeps
    its initial weights (``kept: initial`` in its record): BLD never makes a sub-block
    worse on held-out tokens than where it started.
    """
    ranks = ranks or Ranks()
    variants = trainable_variants(library)
    count = max(1, min(groups, len(library.layers)))
    bounds = [round(i * len(library.layers) / count) for i in range(count + 1)]
    weights: dict[str, dict[str, torch.Tensor]] = {}
    record: list[dict[str, Any]] = []
    for g in range(count):
        part = [v for v in variants if bounds[g] <= v.layer < bounds[g + 1]]
        if not part:
            continue
        folder = work / f"group-{g}" if count > 1 else work
        done = TrainedBlocks.load(folder) if count > 1 else None
        if done is None:
            again = resume and (folder / "checkpoints" / "latest").is_file()
            done = _train_group(model, part, passes, batches, heldout, options, folder, again,
                                trainer_options, ranks)  # fmt: skip
            if count > 1:
                ranks.on_zero(done.save, folder)
        weights.update(done.weights)
        record.extend(done.record)
    return TrainedBlocks(weights, record)


def _train_group(model, variants, passes, batches, heldout, options, work, resume,
                 trainer_options, ranks) -> TrainedBlocks:  # fmt: skip
    """One Lightning run training ``variants`` together from one parent pass a step."""
    from minitron.distill.run import StepCheckpoint, StepProgress, fit, quiet_lightning

    students = build_students(model, variants, passes)
    before = heldout_nmse(model, variants, students, heldout, ranks)
    L.seed_everything(options.seed, verbose=False)
    module = BLDModule(model, variants, students, batches, options)
    dtype = next(model.parameters()).dtype
    # exact: the start was built in this dtype
    initial = {key: _cast(state, dtype) for key, state in module.trained().items()}
    matmul = torch.get_float32_matmul_precision()  # before / after NMSE both measured in it
    quiet_lightning()
    precision = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}.get(dtype, "32-true")
    extra = dict(trainer_options or {})
    device = next(model.parameters()).device
    progress = StepProgress(options.steps, "blockwise distillation", "nmse")
    trainer = L.Trainer(
        max_steps=options.steps,
        precision=extra.pop("precision", precision),
        accelerator=extra.pop("accelerator", "gpu" if device.type == "cuda" else "cpu"),
        devices=extra.pop("devices", [device.index] if device.index is not None else 1),
        gradient_clip_val=None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        logger=False,
        callbacks=[
            StepCheckpoint(work, extra.pop("checkpoint_every", 50), options.steps, 1),
            progress,
        ],
        default_root_dir=work,
        use_distributed_sampler=False,
        **extra,
    )
    try:
        fit(trainer, module, work, resume)
    finally:
        torch.set_float32_matmul_precision(matmul)
    # rank 0 keeps (and saves) the fp32 masters; the others score in the parent's dtype
    kept_dtype = torch.float32 if ranks.zero else dtype
    weights = {key: _cast(state, kept_dtype) for key, state in module.trained().items()}
    for halves in module.students.values():
        # Lightning's teardown left the module on the CPU; measure the sub-blocks where the
        # parent is, as they are served and scored: in the parent's dtype
        halves.to(device=device, dtype=dtype)
    after = heldout_nmse(model, variants, module.layers, heldout, ranks)
    record = []
    for v, b, a in zip(variants, before, after, strict=True):
        kept = "trained" if a < b else "initial"
        if kept == "initial":
            weights[v.key] = _cast(initial[v.key], kept_dtype)
        record.append({"layer": v.layer, "sub_block": v.half, "config": v.config.to_dict(),
                       "key": v.key, "nmse_init": b, "nmse_trained": a, "kept": kept})  # fmt: skip
    del trainer, module, students  # they refer to each other: collect them now
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return TrainedBlocks(weights, record)


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: value.to(dtype) for name, value in state.items()}
