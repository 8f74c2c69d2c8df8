"""Peak host memory of `minitron distill` on prepared data, by dataset size; step speed
against the in-memory path. One JSON object, every figure from one run on this machine.

Writes two prepared datasets of random tokens (2M and 40M by default) with
megatron-core's `IndexedDatasetBuilder` and a `data.json` matching the student's
tokenizer, then runs the same short `minitron distill` (a tiny random teacher and
student, `--steps` steps) on each in a fresh process and reads that process's peak
RSS. The target: equal within 5% (memory does not grow with the data). A third run
reads the same kind of text packed in memory (`data.source`) for the step-time ratio.

    python benchmarks/prepared_memory.py
    python benchmarks/prepared_memory.py --tokens 2e6 4e7 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minitron.prepared.build import import_indexed_dataset, vocab_hash  # noqa: E402
from tests.conftest import char_tokenizer, tiny_llama  # noqa: E402

RECIPE = """\
teacher: {root}/teacher
student: {root}/student
data: {data}
max_steps: {steps}
precision: "32"
accelerator: cpu
val_every: {steps}
checkpoint_every: {steps}
log_every: 1
"""
# Peak RSS of the command's process, from a wrapper process that waits for it alone.
MEASURE = (
    "import resource, subprocess, sys; "
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.stderr.write(done.stderr[-2000:] if done.returncode else '')"
)


def write_prepared(prefix: Path, tokens: int, vocab: int, eos: int, tokenizer) -> None:
    """Random documents of 200-2000 tokens ending in EOS, ``tokens`` in all, + data.json."""
    indexed = import_indexed_dataset()
    rng = numpy.random.default_rng(0)
    builder = indexed.IndexedDatasetBuilder(str(prefix) + ".bin", dtype=numpy.uint16)
    written = 0
    while written < tokens:
        doc = rng.integers(3, vocab, int(rng.integers(200, 2000)), dtype=numpy.uint16)
        doc[-1] = eos
        builder.add_document(doc, [len(doc)])
        written += len(doc)
    builder.finalize(str(prefix) + ".idx")
    manifest = {"vocab_hash": vocab_hash(tokenizer), "tokenizer": "student", "tokens": written}
    (prefix.parent / "data.json").write_text(json.dumps(manifest))


def run(root: Path, name: str, data: str, steps: int) -> dict:
    recipe = root / f"{name}.yaml"
    recipe.write_text(RECIPE.format(root=root, data=data, steps=steps))
    command = [str(Path(sys.executable).parent / "minitron"), "distill", str(recipe),
               "--output", str(root / f"out-{name}")]  # fmt: skip
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True,
                          text=True, env=env)  # fmt: skip
    code, peak_kib = map(int, done.stdout.split())
    if code:
        raise SystemExit(f"{name}: distill failed: {done.stderr}")
    record = json.loads((root / f"out-{name}" / "distill.json").read_text())
    speeds = [r["tokens_per_s"] for r in record["history"][2:]]  # first steps warm up
    return {"peak_rss_mib": round(peak_kib / 1024, 1), "tokens_per_s": statistics.median(speeds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=float, nargs=2, default=[2e6, 4e7])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = char_tokenizer()
        shape = {"hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 256}
        for name, layers, seed in (("teacher", 4, 0), ("student", 2, 3)):
            tiny_llama(layers, seed=seed, **shape).save_pretrained(root / name)
            tokenizer.save_pretrained(root / name)
        for tokens in args.tokens:
            name = f"prepared-{tokens / 1e6:g}M"
            folder = root / name
            folder.mkdir()
            write_prepared(folder / "random", int(tokens), 98, tokenizer.eos_token_id, tokenizer)
            data = (
                f"{{prepared: [{{path: {folder}/random}}], seq_len: 256, heldout: 4, "
                "batch_size: 4}"
            )
            results[name] = run(root, name, data, args.steps)
        data = "{source: stdlib, samples: 128, heldout: 4, seq_len: 256, batch_size: 4}"
        results["in-memory"] = run(root, "in-memory", data, args.steps)
    small, large = (results[f"prepared-{t / 1e6:g}M"] for t in args.tokens)
    print(json.dumps({
        "runs": results,
        "peak_rss_ratio_large_over_small": round(large["peak_rss_mib"] / small["peak_rss_mib"], 4),
        "step_speed_prepared_over_in_memory": round(
            small["tokens_per_s"] / results["in-memory"]["tokens_per_s"], 3
        ),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
