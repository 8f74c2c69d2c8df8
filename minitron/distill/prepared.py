"""Distillation on prepared datasets: checks before weights load, and the lazily built blend.

``check_prepared_run`` reads only the ``.idx`` files and ``data.json``: it refuses a
dataset prepared with another vocabulary than the student's and a run that would
read a dataset more than ``max_epochs`` times. ``LazyBlend`` is what the
``DistillModule`` receives instead of in-memory tokens: it builds the blend in the
module's ``setup`` (after Lightning has made the process group, so global rank 0
writes megatron-core's index caches and the other ranks read them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch

from minitron.errors import MinitronError
from minitron.prepared.read import HELDOUT_PERCENT, BlendedSequences, Prepared, open_blend


def manifest_of(path: str) -> dict[str, Any] | None:
    """The ``data.json`` beside a prepared dataset (``None`` for data prepared elsewhere)."""
    record = Path(path).parent / "data.json"
    return json.loads(record.read_text()) if record.is_file() else None


@dataclass
class PreparedRun:
    """A prepared-data run's datasets, checked: their sizes and what the run reads."""

    sources: list[Prepared]
    seq_len: int
    tokens: dict[str, int]  # tokens in each dataset
    manifests: dict[str, Any] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)  # no data.json: vocabulary unchecked
    train_tokens: int = 0  # tokens the whole run reads (steps x global batch x seq_len)

    def reads(self, train_tokens: int | None = None) -> dict[str, float]:
        """Training tokens read from each dataset, by its share of the weights."""
        total = self.train_tokens if train_tokens is None else train_tokens
        weight = sum(s.weight for s in self.sources)
        return {s.path: total * s.weight / weight for s in self.sources}

    def epochs(self, train_tokens: int | None = None) -> dict[str, float]:
        """How many times the run reads each dataset's training split."""
        share = 1 - HELDOUT_PERCENT / 100
        reads = self.reads(train_tokens)
        return {p: reads[p] / (self.tokens[p] * share) for p in self.tokens}

    def refuse_beyond(self, max_epochs: float) -> None:
        """Refuse a run that reads any dataset more than ``max_epochs`` times (one line)."""
        reads = self.reads()
        for path, epochs in self.epochs().items():
            if epochs > max_epochs:
                raise MinitronError(
                    f"{path}: the run reads {reads[path]:,.0f} tokens from it, {epochs:.2f} "
                    f"times its {self.tokens[path] * (1 - HELDOUT_PERCENT / 100):,.0f} training "
                    f"tokens (data.max_epochs is {max_epochs:g}: raise it, lower max_steps, "
                    "or prepare more)"
                )

    def info(self) -> dict[str, Any]:
        return {
            "prepared": [{"path": s.path, "weight": s.weight} for s in self.sources],
            "seq_len": self.seq_len,
            "tokens": self.tokens,
            "epochs": {p: round(e, 4) for p, e in self.epochs().items()},
            "data_json": self.manifests,
        }


def check_prepared_run(sources: Sequence[Prepared], seq_len: int, vocab_hash: str) -> PreparedRun:
    """Check a prepared-data run's datasets before any weights load; read their sizes.

    Args:
        sources: The blend.
        seq_len: Tokens per sequence.
        vocab_hash: ``vocab_hash`` of the student's tokenizer.

    Raises:
        MinitronError: A missing dataset, or one prepared with another vocabulary than
            the student's.
    """
    from minitron.prepared.read import check_prepared, document_tokens

    check_prepared(sources)
    run = PreparedRun(list(sources), seq_len, {})
    for source in sources:
        manifest = manifest_of(source.path)
        if manifest is None:
            run.unverified.append(source.path)
        elif manifest.get("vocab_hash") != vocab_hash:
            raise MinitronError(
                f"{source.path} was prepared with the tokenizer of {manifest.get('tokenizer')}, "
                "whose vocabulary differs from the student's: prepare it with the student's"
            )
        else:
            run.manifests[source.path] = manifest
        run.tokens[source.path] = document_tokens(source.path)
    return run


@dataclass
class LazyBlend:
    """The blend of a prepared-data run, built when the module is set up."""

    run: PreparedRun
    seed: int
    heldout: int
    vocab_size: int
    eod: int
    cache_dir: str
    train: BlendedSequences | None = None
    heldout_tokens: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return self.run.seq_len

    def open(self, train_sequences: int) -> tuple[BlendedSequences, torch.Tensor]:
        if self.train is None:
            self.train, self.heldout_tokens = open_blend(
                self.run.sources, self.seq_len, self.seed, train_sequences, self.heldout,
                self.vocab_size, self.eod, self.cache_dir,
            )  # fmt: skip
        return self.train, self.heldout_tokens

    def tokens_per_source(self, sequences: int) -> dict[str, int]:
        """Training tokens read from each dataset by the first ``sequences`` positions."""
        if self.train is None:
            return {}
        index = numpy.asarray(self.train.blend.dataset_index[:sequences])
        counts = numpy.bincount(index, minlength=len(self.run.sources))
        return {
            s.path: int(c) * self.seq_len for s, c in zip(self.run.sources, counts, strict=True)
        }
