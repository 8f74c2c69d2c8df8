"""Decode speed-up of Llama-3.1-Minitron-4B-Depth over Llama-3.1-8B, from their configs.

Builds both shapes with random weights (config-only fixture folders) and runs
``minitron bench`` on them; the paper reports 2.7× throughput for the depth
variant. On a machine where the 8B does not fit, or would take too long, only
the size ratios are printed (timing is skipped with the reason). Prints one
JSON object.

    .venv/bin/python benchmarks/depth_speedup.py [--device cuda] [--batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minitron.commands.bench import BenchConfig, run_bench

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    config = BenchConfig(
        models=[str(FIXTURES / "llama-3.1-8b"), str(FIXTURES / "llama-3.1-minitron-4b-depth")],
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        prompt_len=args.prompt_len, gen_len=args.gen_len, device=args.device,
        dtype=args.dtype, max_seconds=args.max_seconds,
    )  # fmt: skip
    record = run_bench(config)
    big, small = record["models"]
    print(json.dumps({
        "device": record["device"], "dtype": record["dtype"],
        "params": [big["params"], small["params"]],
        "params_ratio": small["params"] / big["params"],
        "kv_ratio": small["kv_bytes_per_token"] / big["kv_bytes_per_token"],
        "timing_skipped": [big["timing_skipped"], small["timing_skipped"]],
        "decode_speedup": small["speedup"],
        "prefill_speedup": {
            k: v / big["prefill_tokens_per_s"][k]
            for k, v in small.get("prefill_tokens_per_s", {}).items()
            if k in big.get("prefill_tokens_per_s", {})
        },
        "paper_throughput_speedup": 2.7,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
