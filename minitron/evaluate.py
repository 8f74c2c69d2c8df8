"""Held-out perplexity of a causal LM."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from minitron.layers import check_plain_head, decoder, head_nll
from minitron.progress import progress


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
