"""Distillation data: packed sequences, a seeded order, and the batches of each step.

The training order is a function of the seed and the position alone: pass ``e``
over the training sequences is ``randperm(N)`` drawn from ``seed + e``. Optimizer
step ``s`` with ``W`` ranks, ``A`` accumulation micro-batches and ``m`` sequences
per micro-batch reads global positions ``s·G .. (s+1)·G - 1`` (``G = W·A·m``);
micro-batch ``j`` of rank ``r`` takes the ``m`` positions starting at
``s·G + (j·W + r)·m``. So a run resumed at step ``s`` reads exactly what an
uninterrupted run would, and one process with ``m = 4`` sees the same global
batch as two with ``m = 2``. A blend of prepared datasets is already ordered by its
own seed: position ``p`` reads its sequence ``p`` (``PositionOrder``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset


@dataclass(frozen=True)
class Layout:
    """How one optimizer step's global batch is split.

    Attributes:
        micro_batch: Sequences per forward pass on one rank.
        accumulation: Micro-batches per optimizer step on one rank.
        world_size: Ranks (devices times nodes).
    """

    micro_batch: int
    accumulation: int
    world_size: int = 1

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step, all ranks together."""
        return self.micro_batch * self.accumulation * self.world_size


def passes_needed(sequences: int, steps: int, layout: Layout) -> float:
    """How many times ``steps`` optimizer steps read the training set (> 1: it wraps)."""
    return steps * layout.global_batch / sequences


class SeededOrder:
    """Global position -> training sequence index, one fresh permutation per pass."""

    def __init__(self, sequences: int, seed: int):
        self.sequences = sequences
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """``[sequences]`` the order of pass ``epoch`` (0-indexed)."""
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._cache = {epoch: torch.randperm(self.sequences, generator=generator)}
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        """``[count]`` sequence indices at global positions ``start .. start + count - 1``."""
        positions = torch.arange(start, start + count)
        out = torch.empty(count, dtype=torch.long)
        for epoch in positions.div(self.sequences, rounding_mode="floor").unique().tolist():
            mask = positions // self.sequences == epoch
            out[mask] = self.permutation(epoch)[positions[mask] % self.sequences]
        return out


class PositionOrder:
    """Global position -> itself: for prepared blends, whose own seed fixes the order."""

    def indices(self, start: int, count: int) -> torch.Tensor:
        return torch.arange(start, start + count)


class StepBatches(IterableDataset):
    """This rank's micro-batches ``[m, T]`` from optimizer step ``start_step`` on, forever.

    Used with ``DataLoader(batch_size=None)``; the trainer's ``max_steps`` ends
    the run. Lightning builds the loader after restoring a checkpoint, so
    ``start_step`` is the restored step and a resumed run continues the order.
    """

    def __init__(
        self, tokens: torch.Tensor, seed: int, layout: Layout, rank: int = 0, start_step: int = 0
    ):
        super().__init__()
        self.tokens = tokens  # [N, T] int64, or sequences by global position (a blend)
        positional = getattr(tokens, "by_position", False)  # already shuffled by its seed
        self.order = PositionOrder() if positional else SeededOrder(len(tokens), seed)
        self.layout = layout
        self.rank = rank
        self.start_step = start_step

    def micro_batch(self, step: int, index: int) -> torch.Tensor:
        """``[m, T]`` micro-batch ``index`` (0..A-1) of this rank at optimizer step ``step``."""
        lay = self.layout
        start = step * lay.global_batch + (index * lay.world_size + self.rank) * lay.micro_batch
        return self.tokens[self.order.indices(start, lay.micro_batch)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = self.start_step
        while True:
            for index in range(self.layout.accumulation):
                yield self.micro_batch(step, index)
            step += 1


def rank_shard(tokens: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """``[n_r, T]`` rank ``rank``'s share of held-out ``tokens`` [N, T] (every W-th row)."""
    return tokens[rank::world_size]
