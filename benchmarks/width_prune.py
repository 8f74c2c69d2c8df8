"""What width pruning of the embedded SmolLM2-135M costs, and what activation importance buys.

Runs each step of `recipes/smollm2-135m/width.yaml` on its own and times it: the
activation-importance pass over the calibration data, planning, slicing, and the
held-out perplexity of the cut model; then the same shape cut by first-k and random
channels (no importance) for comparison, and one held-out KL-to-parent evaluation
(the unit of work of a `target:` search, per candidate). Prints one JSON object.

    python benchmarks/width_prune.py                     # the recipe's data (32 x 256 tokens)
    python benchmarks/width_prune.py --samples 128       # more calibration text
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from minitron.commands.prune import PruneConfig
from minitron.config import load_recipe
from minitron.data import batches, load_text_data
from minitron.eval.perplexity import perplexity
from minitron.hardware import cpu_bf16_native
from minitron.importance.width import width_importance
from minitron.io import load_model
from minitron.prune import count_parameters
from minitron.prune.target import heldout_kl
from minitron.prune.width import (
    first_k_plan,
    plan_width,
    random_plan,
    requested_shape,
    slice_model,
)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m" / "width.yaml"


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None, help="calibration sequences")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_recipe(RECIPE, PruneConfig)
    if args.samples:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, samples=args.samples)
        )
    (model, tokenizer), load_s = timed(load_model, config.parent, "float32", "cpu")
    data = load_text_data(config.data, tokenizer)
    calibration = batches(data.calibration, config.data.batch_size)
    heldout = batches(data.heldout, config.data.batch_size)
    shape = requested_shape(
        model.config,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
    )
    scores, importance_s = timed(width_importance, model, calibration)
    plan, plan_s = timed(plan_width, scores, shape)
    student, slice_s = timed(slice_model, model, plan)
    parent_ppl, ppl_s = timed(perplexity, model, heldout)
    layers = range(model.config.num_hidden_layers)
    results = {"activation importance": perplexity(student, heldout)}
    results["first-k"] = perplexity(
        slice_model(model, first_k_plan(model.config, shape, layers)), heldout
    )
    for seed in (0, 1, 2):
        plan_r = random_plan(model.config, shape, layers, torch.Generator().manual_seed(seed))
        results[f"random (seed {seed})"] = perplexity(slice_model(model, plan_r), heldout)
    kl, kl_s = timed(heldout_kl, model, student, heldout)
    tokens = sum(ids.numel() for ids in calibration)
    print(
        json.dumps(
            {
                "model": config.parent,
                "shape": dataclasses.asdict(shape),
                "params": [count_parameters(model), count_parameters(student)],
                "calibration_tokens": tokens,
                "heldout_tokens": sum(ids.numel() for ids in heldout),
                "heldout_perplexity": {"parent": parent_ppl} | results,
                "heldout_kl_to_parent": kl,
                "seconds": {
                    "load": round(load_s, 2),
                    "importance_pass": round(importance_s, 2),
                    "plan": round(plan_s, 4),
                    "slice": round(slice_s, 3),
                    "heldout_perplexity_one_model": round(ppl_s, 2),
                    "heldout_kl_one_candidate": round(kl_s, 2),
                },
                "importance_tokens_per_s": round(tokens / importance_s),
                "importance_pass_vs_one_perplexity_pass": round(
                    importance_s / ppl_s * sum(ids.numel() for ids in heldout) / tokens, 2
                ),
                "cpu": platform.processor() or platform.machine(),
                "native_bf16": cpu_bf16_native()[0],
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
