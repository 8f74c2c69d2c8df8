"""How much of the pruning loss `minitron distill` wins back, KD against plain LM loss.

The embedded SmolLM2-135M (30 layers) pruned to 20 by `recipes/smollm2-135m/depth.yaml`
is trained twice from the same pruned start, on the same data, steps and schedule,
through the real `minitron distill` path (`run_distill` on the demo recipe
`recipes/smollm2-135m/distill.yaml`): once with KD (forward KL to the parent's
logits) and once with the student's own LM loss alone. Held-out perplexity of the
parent, the pruned start and both students is measured by the run's own validation
on held-out sequences it never trains on. Prints one JSON line:

    recovered = (log ppl_pruned - log ppl_student) / (log ppl_pruned - log ppl_parent)

Target: KD recovers >= 0.5 within the demo's budget and beats LM loss.

    python benchmarks/recovery.py                       # drops layers 9..18 itself
    python benchmarks/recovery.py --pruned runs/smollm2-135m/depth --steps 90
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from minitron.commands.distill import DistillConfig, run_distill
from minitron.config import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m" / "distill.yaml"
DEMO_DROP = list(range(9, 19))  # the block depth.yaml picks on the embedded model (0-indexed)


def prune_embedded(folder: Path, drop: list[int]) -> Path:
    """Save the embedded model without layers ``drop`` to ``folder``; returns it."""
    from minitron.io import load_model
    from minitron.prune import drop_layers

    model, tokenizer = load_model("smollm2-135m", "float32", "cpu")
    drop_layers(model, drop)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "prune.json").write_text(json.dumps({"dropped_layers": drop}))
    return folder


def dropped_of(pruned: Path) -> list[int] | None:
    record = pruned / "prune.json"
    return json.loads(record.read_text()).get("dropped_layers") if record.is_file() else None


def train(config: DistillConfig, objective: str, out: Path) -> tuple[dict, float]:
    """Run ``minitron distill`` with ``objective``; returns its record and wall seconds."""
    loss = dataclasses.replace(config.loss, objective=objective)
    run = dataclasses.replace(config, loss=loss)
    start = time.perf_counter()
    record = run_distill(run, out / objective, overwrite=True)
    return record, time.perf_counter() - start


def recovered(parent: float, pruned: float, student: float) -> float:
    """Share of the lost log-perplexity won back (1 = parent's, 0 = pruned start's)."""
    return (math.log(pruned) - math.log(student)) / (math.log(pruned) - math.log(parent))


def summary(runs: dict, config: DistillConfig, dropped: list[int] | None) -> dict:
    """The JSON line: parent / pruned / per-objective perplexity, KL and recovered share."""
    first = next(iter(runs.values()))[0]
    parent_ppl = first["teacher_val"]["val_ppl"]
    pruned_ppl = first["start"]["val_ppl"]
    out = {
        "parent_ppl": round(parent_ppl, 3),
        "pruned_ppl": round(pruned_ppl, 3),
        "dropped_layers": dropped,
        "steps": first["steps"],
        "tokens": first["tokens_seen"],
        "global_batch": first["global_batch"],
        "seq_len": config.data.seq_len,
        "heldout_sequences": config.data.heldout,
        "precision": config.precision,
        "threads": torch.get_num_threads(),
    }
    for objective, (record, seconds) in runs.items():
        final = record["final"]
        out[f"{objective}_ppl"] = round(final["val_ppl"], 3)
        out[f"{objective}_kl"] = round(final.get("val_kl", float("nan")), 4)
        share = recovered(parent_ppl, pruned_ppl, final["val_ppl"])
        out[f"{objective}_recovered"] = round(share, 4)
        out[f"{objective}_seconds"] = round(seconds, 1)
        out[f"{objective}_wall_tokens_per_s"] = round(record["tokens_seen"] / seconds, 1)
    out["start_kl"] = round(first["start"].get("val_kl", float("nan")), 4)
    if "kd_ppl" in out and "lm_ppl" in out:
        out["kd_beats_lm"] = out["kd_ppl"] < out["lm_ppl"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pruned", help="an existing prune output (default: drop layers 9..18)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--set", action="append", default=[], help="recipe override key=value")
    p.add_argument("--objectives", default="kd,lm")
    args = p.parse_args()
    overrides = list(args.set) + ([f"max_steps={args.steps}"] if args.steps else [])
    # the checkpoints only cost time here: one at the end; validation at start and end
    steps_key = args.steps or load_recipe(args.recipe, DistillConfig).max_steps
    overrides += [f"checkpoint_every={steps_key}", f"val_every={steps_key}"]
    with tempfile.TemporaryDirectory(prefix="recovery_") as tmp:
        tmp = Path(tmp)
        pruned = Path(args.pruned) if args.pruned else prune_embedded(tmp / "pruned", DEMO_DROP)
        dropped = dropped_of(pruned)
        config = load_recipe(args.recipe, DistillConfig, [f"student={pruned}", *overrides])
        torch.manual_seed(config.seed)
        runs = {o: train(config, o, tmp) for o in args.objectives.split(",")}
    print(json.dumps(summary(runs, config, dropped)))


if __name__ == "__main__":
    main()
