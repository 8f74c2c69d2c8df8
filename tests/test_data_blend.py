"""Prepared datasets read back as a weighted blend: proportions, positions, ranks, held-out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from minitron.commands.data import PrepareConfig, run_prepare
from minitron.config import parse_config
from minitron.errors import MinitronError
from minitron.prepared.read import Prepared, open_blend
from tests.conftest import char_tokenizer

SEQ = 32
EOS = 1


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Two prepared sources whose documents carry markers: 'A<n>;' and 'B<n>;'."""
    from tests.conftest import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("blend")
    checkpoint = save_tiny_checkpoint(root / "tiny")
    for name, letter in (("first", "A"), ("second", "B")):
        lines = [
            json.dumps({"text": f"{letter}{i}; " + "words " * (i % 5 + 2)}) for i in range(400)
        ]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    config = parse_config(PrepareConfig, {
        "tokenizer": str(checkpoint),
        "sources": [{"name": n, "path": str(root / f"{n}.jsonl")} for n in ("first", "second")],
    })  # fmt: skip
    run_prepare(config, root / "data")
    return root


def blend(root, seed=7, train=10_000, heldout=4, weights=(0.7, 0.3), cache="cache"):
    sources = [
        Prepared(str(root / "data" / n), w)
        for n, w in zip(("first", "second"), weights, strict=True)
    ]
    return open_blend(sources, SEQ, seed, train, heldout, 98, EOS, root / cache)


def markers(ids: torch.Tensor) -> set[str]:
    text = char_tokenizer().decode(ids.tolist())
    return set(re.findall(r"[AB]\d+;", text))


def test_blend_follows_the_weights_over_10000_sequences(prepared):
    train, _ = blend(prepared)
    assert len(train) == 10_000
    origin = train.sources(torch.arange(10_000))
    share = origin.count(str(prepared / "data/first")) / 10_000
    print(f"0.7 / 0.3 blend: {share:.4f} of the first 10,000 sequences from the first source")
    assert share == pytest.approx(0.7, abs=0.01)
    batch = train[torch.arange(0, 10_000, 997)]
    assert batch.shape == (11, SEQ) and batch.dtype == torch.long
    for row, source in zip(batch, origin[::997], strict=True):  # the content is the source's
        letters = {m[0] for m in markers(row)}
        assert letters <= {"A" if source.endswith("first") else "B"}


def test_positions_are_a_function_of_seed_and_position(prepared):
    train, held = blend(prepared)
    again, held_again = blend(prepared, cache="other-cache")  # rebuilt from nothing
    positions = torch.tensor([0, 1, 2, 999, 5000, 9999])
    assert torch.equal(train[positions], again[positions])
    assert torch.equal(held, held_again)
    other, _ = blend(prepared, seed=8)
    assert not torch.equal(train[positions], other[positions])


def test_heldout_documents_are_never_in_training_sequences(prepared):
    train, held = blend(prepared, heldout=6)
    seen = set()
    for start in range(0, 2000, 200):
        for row in train[torch.arange(start, start + 200)]:
            seen |= markers(row)
    held_out = set().union(*(markers(row) for row in held))
    assert held_out and not held_out & seen


def test_two_gloo_ranks_read_what_one_reads(prepared, tmp_path):
    """Rank 0 builds the index cache, rank 1 reads it; both see position p as one rank does."""
    train, _ = blend(prepared, cache="one-rank")
    expected = train[torch.arange(0, 200)]
    script = textwrap.dedent(f"""
        import os, sys, torch, torch.distributed as dist
        sys.path.insert(0, {str(os.getcwd())!r})
        from minitron.prepared.read import Prepared, open_blend
        rank = int(sys.argv[1])
        store = "file://{tmp_path}/store"
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
        sources = [Prepared({str(prepared / "data/first")!r}, 0.7),
                   Prepared({str(prepared / "data/second")!r}, 0.3)]
        train, _ = open_blend(sources, {SEQ}, 7, 10_000, 4, 98, 1, {str(tmp_path / "cache")!r})
        torch.save(train[torch.arange(rank, 200, 2)], {str(tmp_path)!r} + f"/rank{{rank}}.pt")
        dist.barrier()
        dist.destroy_process_group()
    """)
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(r)], stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got, expected[rank::2])


def test_missing_prepared_dataset_is_one_line(tmp_path):
    with pytest.raises(MinitronError, match="prepared dataset not found: .*nothing.bin"):
        open_blend([Prepared(str(tmp_path / "nothing"))], SEQ, 0, 10, 1, 98, EOS, tmp_path)
