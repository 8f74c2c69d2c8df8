"""Training sequences from prepared datasets: a weighted blend read through megatron-core.

``open_blend`` builds megatron-core's ``GPTDataset`` per prepared dataset and a
``BlendedDataset`` over them (the exact, deterministic blend Megatron-LM and NeMo
train on) for a training split and a held-out split of documents no training
sequence reads. ``BlendedSequences`` then gives the ``T``-token sequence at any
global position: a function of the seed and the position alone, so any number of
ranks, resumed at any step, read exactly what one uninterrupted run reads. Every
read is a view of a memory-mapped file; nothing is held in Python lists.

megatron-core needs a process group to build its index caches (rank 0 writes them
to ``cache_dir``, the others wait and read them); where none exists a one-rank gloo
group is made for the build and removed after.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch

from minitron.errors import MinitronError

# Percent of documents per split (train, held-out, test): Megatron splits each
# prepared dataset by documents, so held-out text is never in a training sequence.
HELDOUT_PERCENT = 2


@dataclass(frozen=True)
class Prepared:
    """One prepared dataset of a blend: its ``.bin``/``.idx`` prefix and its weight."""

    path: str
    weight: float = 1.0


class _Tokenizer:
    """What megatron-core's GPT datasets read from a tokenizer: EOD, pad and vocabulary
    size, and identifiers for their cache names. Pad is -1, a token id no file holds,
    so megatron-core never masks or rewrites a real token."""

    def __init__(self, vocab_size: int, eod: int):
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = -1
        self.unique_identifiers = {"class": "minitron", "vocab_size": vocab_size, "eod": eod}


def _megatron():
    with warnings.catch_warnings():  # Transformer Engine / Apex notices about GPU kernels
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return BlendedMegatronDatasetBuilder, GPTDataset, GPTDatasetConfig, IndexedDataset


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """The existing process group, or a one-rank gloo group for the duration."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def check_prepared(sources: Sequence[Prepared]) -> None:
    """Refuse a missing ``.bin`` / ``.idx`` pair or a weight that is not positive."""
    if not sources:
        raise MinitronError("data.prepared: give at least one prepared dataset")
    for source in sources:
        for suffix in (".bin", ".idx"):
            if not Path(source.path + suffix).is_file():
                raise MinitronError(
                    f"prepared dataset not found: {source.path}{suffix} "
                    "(path is the prefix of a .bin/.idx pair, e.g. runs/data/web/fineweb)"
                )
        if not source.weight > 0:
            raise MinitronError(f"{source.path}: weight must be above 0 (got {source.weight})")


class BlendedSequences:
    """``[m, T]`` sequences of a blend by global position; which dataset each came from."""

    by_position = True  # StepBatches reads position p as sequence p (no second shuffle)

    def __init__(self, blend: Any, seq_len: int, paths: list[str]):
        self.blend = blend
        self.seq_len = seq_len
        self.paths = paths

    def __len__(self) -> int:
        return len(self.blend)

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        rows = []
        for p in positions.tolist():
            sample = self.blend[p]
            rows.append(torch.cat([sample["tokens"], sample["labels"][-1:]]))
        return torch.stack(rows)

    def sources(self, positions: torch.Tensor) -> list[str]:
        """The prepared dataset (its prefix) each position reads."""
        index = self.blend.dataset_index
        return [self.paths[int(index[p])] for p in positions.tolist()]


def open_blend(
    sources: Sequence[Prepared],
    seq_len: int,
    seed: int,
    train_sequences: int,
    heldout_sequences: int,
    vocab_size: int,
    eod: int,
    cache_dir: str | Path,
) -> tuple[BlendedSequences, torch.Tensor]:
    """The training blend (``train_sequences`` positions) and ``[heldout, T]`` held-out tokens.

    Args:
        sources: The prepared datasets and their weights (normalised by megatron-core).
        seq_len: Tokens per sequence ``T``.
        seed: The blend's and the shuffles' seed.
        train_sequences: Positions the training run reads (steps x global batch).
        heldout_sequences: Held-out sequences, from documents no training sequence uses.
        vocab_size: Tokenizer vocabulary size.
        eod: The end-of-document (EOS) token the documents end with.
        cache_dir: Where megatron-core keeps its index caches: global rank 0 writes
            them while the other ranks wait, then they read them (storage every node sees).
    """
    check_prepared(sources)
    builder_cls, gpt_cls, config_cls, _ = _megatron()
    config = config_cls(
        random_seed=seed,
        sequence_length=seq_len - 1,  # + the extra label token = seq_len tokens
        blend=([s.path for s in sources], [s.weight for s in sources]),
        split=f"{100 - HELDOUT_PERCENT},{HELDOUT_PERCENT},0",
        path_to_cache=str(cache_dir),
        tokenizer=_Tokenizer(vocab_size, eod),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    sizes = [train_sequences, heldout_sequences, 0]
    with process_group(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            train, heldout, _ = builder_cls(gpt_cls, sizes, lambda: True, config).build()
        except (AssertionError, ValueError, IndexError) as err:
            raise MinitronError(f"could not build the blend of prepared datasets: {err}") from None
    if heldout is None or len(heldout) < heldout_sequences:
        raise MinitronError(
            f"the held-out {HELDOUT_PERCENT}% of documents holds fewer than "
            f"{heldout_sequences} sequences of {seq_len} tokens (lower data.heldout)"
        )
    paths = [s.path for s in sources]
    held = BlendedSequences(heldout, seq_len, paths)[torch.arange(heldout_sequences)]
    return BlendedSequences(train, seq_len, paths), held


def document_tokens(path: str) -> int:
    """Tokens in a prepared dataset (from its index alone)."""
    *_, indexed_cls = _megatron()
    dataset = indexed_cls(path)
    return int(numpy.asarray(dataset.sequence_lengths, dtype=numpy.int64).sum())
