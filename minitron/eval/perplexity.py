"""Perplexity of a causal LM: over batches of sequences, or over long text with a sliding window.

``perplexity`` scores ``[B, T]`` batches (the held-out split of prune and distill);
``sliding_perplexity`` scores one long token stream (``minitron eval --tasks perplexity``).

For the sliding window, the text is one token stream (documents joined by EOS). Windows
of ``window`` tokens start every ``stride`` tokens; each window scores only the tokens the
previous windows did not, so with ``stride < window`` every token after the
first is predicted once, with at least ``window - stride`` tokens of context
carried over from before. ``stride == window`` is plain non-overlapping chunks:
the first token of each chunk has no context and is not scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.layers import check_plain_head, decoder, head_nll
from minitron.progress import progress


@dataclass(frozen=True)
class PerplexityResult:
    """``value`` = exp(mean NLL) over ``tokens`` predicted tokens."""

    value: float
    nll: float
    tokens: int
    window: int
    stride: int


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start of each window over ``length`` tokens; the last one reaches the end."""
    if window < 2 or not 1 <= stride <= window:
        raise MinitronError(f"need window >= 2 and 1 <= stride <= window (got {window}, {stride})")
    starts = [0]
    while starts[-1] + window < length:
        starts.append(starts[-1] + stride)
    return starts


@torch.no_grad()
def sliding_perplexity(
    model: nn.Module, ids: torch.Tensor, window: int, stride: int
) -> PerplexityResult:
    """Perplexity of ``ids`` ``[N]`` with a sliding window. Does not change the model.

    A token ``t`` is scored by the first window that reaches past it (starting
    at ``begin``), with tokens ``begin..t-1`` as context; see the module docstring.
    """
    if ids.dim() != 1 or len(ids) < 2:
        raise MinitronError("perplexity needs at least 2 tokens of text")
    device = next(model.parameters()).device
    starts = window_starts(len(ids), window, stride)
    total, count, scored_to = 0.0, 0, 1  # tokens [1, scored_to) are already scored
    with progress("perplexity", len(starts)) as advance:
        for begin in starts:
            end = min(begin + window, len(ids))
            chunk = ids[begin:end].to(device)[None]  # [1, L]
            normed = decoder(model)(input_ids=chunk, use_cache=False).last_hidden_state
            first = max(scored_to - begin - 1, 0)  # position predicting the first new token
            nll, predicted = head_nll(model, normed[:, first:], chunk[:, first:], normed=True)
            total += nll
            count += predicted
            scored_to = end
            advance(1)
    return PerplexityResult(math.exp(total / count), total / count, count, window, stride)


@torch.no_grad()
def perplexity(model: nn.Module, batches: Sequence[torch.Tensor], label: str = "") -> float:
    """``exp`` of the mean next-token loss over every predicted token of ``batches``.

    Does not change the model. Each batch is ``[B, T]`` token ids. Models that
    soft-cap or scale their logits are refused (see ``check_plain_head``). The LM head
    runs in chunks (see ``head_nll``), so memory stays flat in the vocabulary size.
    """
    check_plain_head(model)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with progress(f"perplexity {label}".strip(), len(batches)) as advance:
        for ids in batches:
            ids = ids.to(device)
            normed = decoder(model)(input_ids=ids, use_cache=False).last_hidden_state
            nll, predicted = head_nll(model, normed, ids, normed=True)
            total += nll
            count += predicted
            advance(1)
    return math.exp(total / count)
