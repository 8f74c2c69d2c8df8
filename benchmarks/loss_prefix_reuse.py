"""Time `loss` importance with prefix reuse against the naive way, in one run.

The naive way removes each candidate block physically and runs the whole pruned
model. Both produce the same scores; the benchmark checks that too. Prints one
JSON object: layer forwards counted by hooks, seconds, and the speedup ratio.

    .venv/bin/python benchmarks/loss_prefix_reuse.py [--model smollm2-135m] [--block-size 10]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from minitron.config import DataConfig
from minitron.data import batches, load_text_data
from minitron.importance import layer_forward_cost, loss_scores
from minitron.io import load_model
from minitron.layers import decoder_layers


def mean_loss(model, data):
    total = count = 0
    with torch.no_grad():
        for ids in data:
            logits = model(ids, use_cache=False).logits[:, :-1]  # [B, T-1, V]
            targets = ids[:, 1:]
            total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
            count += targets.numel()
    return total.item() / count


def naive_loss_scores(model, data, block_sizes):
    """Baseline, then each block removed physically and the whole pruned model run."""
    layers = model.model.layers
    num_layers = len(layers)
    baseline = mean_loss(model, data)
    scores = {}
    try:
        for n in block_sizes:
            row = []
            for start in range(num_layers - n + 1):
                kept = [layer for i, layer in enumerate(layers) if not start <= i < start + n]
                model.model.layers = nn.ModuleList(kept)
                model.config.num_hidden_layers = len(kept)
                row.append(mean_loss(model, data))
            scores[n] = row
    finally:
        model.model.layers = layers
        model.config.num_hidden_layers = num_layers
    return baseline, scores


def count_calls(model):
    counter = {"calls": 0}
    hooks = [
        layer.register_forward_hook(lambda *_: counter.__setitem__("calls", counter["calls"] + 1))
        for layer in decoder_layers(model)
    ]
    return counter, hooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--block-size", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    config = DataConfig(samples=args.samples, heldout=0, seq_len=args.seq_len)
    data = batches(load_text_data(config, tokenizer).calibration, args.samples)
    sizes = sorted({1, args.block_size})
    num_layers = len(decoder_layers(model))

    counter, hooks = count_calls(model)
    start = time.perf_counter()
    reuse_baseline, reuse_scores, _ = loss_scores(model, data, sizes)
    reuse_seconds = time.perf_counter() - start
    reuse_calls = counter["calls"]
    counter["calls"] = 0
    start = time.perf_counter()
    naive_baseline, naive = naive_loss_scores(model, data, sizes)
    naive_seconds = time.perf_counter() - start
    naive_calls = counter["calls"]
    for hook in hooks:
        hook.remove()

    pairs = [(reuse_baseline, naive_baseline)]
    pairs += [p for n in sizes for p in zip(reuse_scores[n], naive[n], strict=True)]
    gap = max(abs(a - b) for a, b in pairs)
    expected = layer_forward_cost(num_layers, sizes)
    print(
        json.dumps(
            {
                "model": args.model,
                "num_layers": num_layers,
                "block_sizes": sizes,
                "tokens": args.samples * args.seq_len,
                "layer_forwards_reuse": reuse_calls,
                "layer_forwards_naive": naive_calls,
                "layer_forwards_expected": expected,
                "seconds_reuse": round(reuse_seconds, 2),
                "seconds_naive": round(naive_seconds, 2),
                "speedup": round(naive_seconds / reuse_seconds, 2),
                "max_score_difference": gap,
                "device": str(next(model.parameters()).device),
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
