"""Tokens/s of `minitron data prepare` on this machine, by worker count, in one run.

Prepares the embedded stdlib corpus (622 documents, ~457k tokens with the SmolLM2
tokenizer) `--repeat` times over as one source with 1, 2, ... worker processes,
through the real `run_prepare`, and prints one JSON object: tokens/s of each and the
speed-up over one process. The files written must be identical for every count.

    python benchmarks/data_prepare.py                 # 1 and 2 processes
    python benchmarks/data_prepare.py --procs 1 2 4 --repeat 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from minitron.commands.data import PrepareConfig, run_prepare
from minitron.config import parse_config
from minitron.corpus import stdlib_documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="copies of the corpus")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with corpus.open("w") as handle:
            for _ in range(args.repeat):
                for text in stdlib_documents():
                    handle.write(json.dumps({"text": text}) + "\n")
        warm = parse_config(PrepareConfig, {"sources": [{"name": "w", "path": "stdlib"}]})
        run_prepare(warm, Path(tmp) / "warm-up")  # converts / caches the tokenizer once
        for procs in args.procs:
            config = parse_config(
                PrepareConfig,
                {"sources": [{"name": "corpus", "path": str(corpus)}], "num_proc": procs},
            )
            start = time.perf_counter()
            manifest = run_prepare(config, Path(tmp) / f"out-{procs}")
            seconds = time.perf_counter() - start
            digest = hashlib.sha256((Path(tmp) / f"out-{procs}/corpus.bin").read_bytes())
            runs[procs] = {
                "tokens": manifest["tokens"],
                "seconds_with_tokenizer_load": round(seconds, 2),
                "seconds_tokenizing_and_writing": manifest["seconds"],
                "tokens_per_s": manifest["tokens_per_second"],
                "bin_sha256": digest.hexdigest()[:16],
            }
    base = runs[args.procs[0]]["tokens_per_s"]
    for record in runs.values():
        record["speedup"] = round(record["tokens_per_s"] / base, 2)
    same = len({r["bin_sha256"] for r in runs.values()}) == 1
    print(json.dumps({"cpus": os.cpu_count(), "runs": runs, "identical_files": same}, indent=2))


if __name__ == "__main__":
    main()
