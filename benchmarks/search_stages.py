"""Stage times of `minitron search` on the embedded model, and what prefix reuse saves.

Runs the stages of `recipes/smollm2-135m/search.yaml` one by one and times each:
library and costs, initialisation statistics, ``--bld-steps`` steps of blockwise
distillation (every trainable sub-block of every layer from one parent pass a step;
seconds per step reported), replace-1-block scores, the MIP, realising the solutions.
Then scores the variants of the last ``--compare`` layers
twice (where the reused prefix is longest): with
prefix reuse (`replace_one_block_scores`: one calibration pass for all, one parent
trace per batch, the suffix per variant) and without (the whole parent copied, the
layer edited with `apply_block_configs` and its own calibration, a full forward),
and prints the ratio. One JSON object.

    python benchmarks/search_stages.py
    python benchmarks/search_stages.py --heldout 2 --compare 4
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from minitron.commands.search import SearchConfig, library_record, plan_library
from minitron.config import load_recipe
from minitron.data import batches, load_text_data
from minitron.io import load_model
from minitron.modeling import llama_to_nas
from minitron.nas import apply_block_configs
from minitron.search.bld import BLDOptions, train_blocks
from minitron.search.library import Library
from minitron.search.mip import solve
from minitron.search.realise import assemble
from minitron.search.scores import replace_one_block_scores
from minitron.search.variants import gather_statistics

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m" / "search.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", type=int, default=2, help="held-out sequences")
    parser.add_argument("--compare", type=int, default=3, help="layers scored both ways")
    parser.add_argument("--bld-steps", type=int, default=5, help="BLD steps timed")
    args = parser.parse_args()
    config = load_recipe(RECIPE, SearchConfig)
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, heldout=args.heldout)
    )
    seconds = {}
    start = time.perf_counter()
    planned = plan_library(config)
    record = library_record(config, planned)
    library = planned[1]
    seconds["library_and_costs"] = time.perf_counter() - start
    model, tokenizer = load_model(config.parent, "float32", "cpu")
    parent = llama_to_nas(model).eval()
    data = load_text_data(config.data, tokenizer)
    calibration = batches(data.calibration, config.data.batch_size)
    heldout = batches(data.heldout, config.data.batch_size)
    start = time.perf_counter()
    passes = gather_statistics(parent, library, calibration, config.ridge)
    seconds["statistics"] = time.perf_counter() - start
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        options = BLDOptions(steps=args.bld_steps, lr=config.bld.lr)
        trained = train_blocks(parent, library, passes, calibration, heldout, options,
                               Path(work), trainer_options={"checkpoint_every": 10**9})  # fmt: skip
    seconds["bld"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = replace_one_block_scores(parent, library, None, heldout, passes=passes,
                                      trained=trained)  # fmt: skip
    seconds["scores"] = time.perf_counter() - start
    params = [[v["params"] for v in layer["variants"]] for layer in record["layers"]]
    start = time.perf_counter()
    limits = {"params": config.constraints.params}
    offsets = {"params": record["non_layer_params"]}
    found, _ = solve(
        scores.kl, {"params": params}, limits, offsets, config.solutions, config.max_shared
    )
    seconds["mip"] = time.perf_counter() - start
    start = time.perf_counter()
    for choice in found:
        blocks = [library.layers[i][v] for i, v in enumerate(choice.variants)]
        assemble(parent, blocks, passes, trained)
    seconds["realise_solutions"] = time.perf_counter() - start
    # Prefix reuse against full forwards, on the first --compare layers' variants.
    first = len(library.layers) - args.compare  # the last layers: the prefix reused is long
    own = [[b] for b in parent.config.block_configs[:first]]  # the parent's block: no work
    part = Library(library.parent, own + library.layers[first:])
    start = time.perf_counter()
    replace_one_block_scores(parent, part, calibration, heldout)
    reuse = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for layer in range(first, len(library.layers)):
            for block in library.layers[layer]:
                blocks = list(parent.config.block_configs)
                blocks[layer] = block
                child = copy.deepcopy(parent)
                apply_block_configs(child, blocks, calibration)
                for ids in heldout:
                    child(ids)
    naive = time.perf_counter() - start
    variants = sum(len(v) for v in library.layers)
    print(json.dumps({
        "model": config.parent, "layers": len(library.layers), "variants": variants,
        "solutions": len(found), "heldout_tokens": sum(ids.numel() for ids in heldout),
        "bld_sub_blocks": len(trained.record), "bld_steps": args.bld_steps,
        "bld_tokens_per_step": calibration[0].numel(),
        "bld_seconds_per_step_with_held_out_nmse": round(seconds["bld"] / args.bld_steps, 2),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "scoring_last_layers": args.compare,
        "scoring_seconds_prefix_reuse": round(reuse, 2),
        "scoring_seconds_full_forwards": round(naive, 2),
        "full_over_reuse": round(naive / reuse, 2),
        "threads": torch.get_num_threads(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
