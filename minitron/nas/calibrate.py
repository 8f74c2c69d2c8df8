"""Statistics of sub-block activations on calibration data, gathered with forward hooks.

Two accumulators, both streaming (memory independent of the number of tokens):
- ``ChannelStats``: mean |activation| of each FFN intermediate channel, measured on
  ``act(gate(x)) * up(x)``, the input of ``down_proj`` (Minitron's activation importance);
  ``I`` float64 sums;
- ``LinearFit``: the normal equations of a least-squares map from a sub-block's input
  (after its norm) to its output, in float64: ``XᵀX`` and ``XᵀY``, ``2 · H² · 8`` bytes
  for a hidden size ``H`` (1 GiB at H = 8192).

Each takes ``device``, where its sums live: ``None`` keeps them on the activations'
device; ``"cpu"`` computes each batch's products where the activations are and adds
them into sums held in CPU memory, so the model's device holds only one batch's
products at a time. The sums are updated in place: an accumulator's memory is its
final size from its first batch on (``nbytes``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from minitron.modeling.modeling import DeciLMAttention

FLOAT64_BYTES = 8


def _accumulate(total: torch.Tensor | None, part: torch.Tensor, device) -> torch.Tensor:
    """``total + part`` in place (``part`` moved to ``device`` first, when given)."""
    if device is not None:
        part = part.to(device)
    if total is None:
        return part
    return total.add_(part)


class ChannelStats:
    """Running mean of |x| per channel over all tokens."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device  # where the sums live; None: the activations' device
        self.total: torch.Tensor | None = None  # [I] float64
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add activations ``[..., I]``."""
        flat = x.detach().reshape(-1, x.shape[-1])  # [N, I]
        part = flat.abs().sum(dim=0, dtype=torch.float64)
        self.total = _accumulate(self.total, part, self.device)
        self.count += flat.shape[0]

    @staticmethod
    def bytes_for(channels: int) -> int:
        """Bytes of the sums for ``channels`` channels."""
        return channels * FLOAT64_BYTES

    @property
    def nbytes(self) -> int:
        """Bytes the sums hold now (0 before the first batch)."""
        return 0 if self.total is None else self.total.nbytes

    @property
    def devices(self) -> set[str]:
        """Devices the sums live on (empty before the first batch)."""
        return set() if self.total is None else {str(self.total.device)}

    def mean(self) -> torch.Tensor:
        """``[I]`` mean |activation| per channel (float64, CPU)."""
        if self.total is None:
            raise ValueError("no activations were recorded")
        return (self.total / self.count).cpu()


# Default ridge of the linear fits, relative to the mean diagonal of XᵀX. Measured on
# SmolLM2-135M (attention -> linear in layers 8-15, 768 calibration tokens for 576
# inputs, held-out perplexity): ridge 0 -> 160, 1e-3 -> 70, 1e-2 -> 49, 1e-1 -> 45;
# no_op 75. Plain least squares overfits when tokens are few next to the width.
RIDGE = 1e-2


@dataclass(frozen=True)
class SolvedFit:
    """A finished least-squares fit: the weight and what the record says about it."""

    weight: torch.Tensor  # [d_out, d_in], in the dtype asked for, on the CPU
    relative_error: float
    tokens: int
    ridge: float


class LinearFit:
    """Least squares ``y ≈ W x`` from streamed pairs, via float64 normal equations."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device  # where the sums live; None: the activations' device
        self.xtx: torch.Tensor | None = None  # [d_in, d_in]
        self.xty: torch.Tensor | None = None  # [d_in, d_out]
        self.yty = 0.0  # sum of y², for the fit's relative error
        self.count = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add inputs ``[..., d_in]`` and outputs ``[..., d_out]``."""
        xf = x.detach().reshape(-1, x.shape[-1]).double()  # [N, d_in]
        yf = y.detach().reshape(-1, y.shape[-1]).double()  # [N, d_out]
        self.xtx = _accumulate(self.xtx, xf.T @ xf, self.device)
        self.xty = _accumulate(self.xty, xf.T @ yf, self.device)
        self.yty += float((yf * yf).sum())
        self.count += xf.shape[0]

    @staticmethod
    def bytes_for(d_in: int, d_out: int) -> int:
        """Bytes of the sums of a ``d_in -> d_out`` fit: ``(d_in² + d_in · d_out) · 8``."""
        return (d_in * d_in + d_in * d_out) * FLOAT64_BYTES

    @property
    def nbytes(self) -> int:
        """Bytes the sums hold now (0 before the first batch)."""
        return 0 if self.xtx is None else self.xtx.nbytes + self.xty.nbytes

    @property
    def devices(self) -> set[str]:
        """Devices the sums live on (empty before the first batch)."""
        return set() if self.xtx is None else {str(self.xtx.device), str(self.xty.device)}

    def finish(self, ridge: float, dtype: torch.dtype) -> SolvedFit:
        """Solve, measure the error, and return the weight as ``dtype`` on the CPU.

        The float64 weight is rounded to ``dtype`` once, as copying it into a layer of
        that dtype would; the error is that of the float64 weight.
        """
        weight = self.solve(ridge)
        error = self.relative_error(weight)
        return SolvedFit(weight.to(dtype), error, self.count, ridge)

    def solve(self, ridge: float = RIDGE) -> torch.Tensor:
        """The ``[d_out, d_in]`` float64 weight minimising ``Σ|y - W x|² + λ|W|²``.

        Args:
            ridge: λ relative to the mean diagonal of XᵀX (0 = plain least squares,
                solved with ``torch.linalg.lstsq``, which copes with too few tokens).
        """
        if self.xtx is None:
            raise ValueError("no activations were recorded")
        xtx, xty = self.xtx.cpu(), self.xty.cpu()
        if ridge > 0:
            lam = ridge * float(xtx.diagonal().mean())
            eye = torch.eye(xtx.shape[0], dtype=xtx.dtype)
            return torch.linalg.solve(xtx + lam * eye, xty).T
        return torch.linalg.lstsq(xtx, xty).solution.T

    def relative_error(self, weight: torch.Tensor) -> float:
        """``Σ|y - W x|² / Σ|y|²`` on the recorded tokens, for a ``[d_out, d_in]`` weight."""
        w = weight.double().cpu()  # [d_out, d_in]
        xtx, xty = self.xtx.cpu(), self.xty.cpu()
        residual = self.yty - 2 * float((w.T * xty).sum()) + float(((w @ xtx) * w).sum())
        return max(residual, 0.0) / max(self.yty, 1e-300)


def io_hook(module: nn.Module, record: Callable[[torch.Tensor, torch.Tensor], None]):
    """Register a hook calling ``record(input, output)`` on each call of a sub-block.

    Softmax attention is called with ``hidden_states=`` and returns ``(out, weights)``;
    the linear sub-blocks and FFNs take and return one tensor.
    """

    def hook(mod, args, kwargs, output):
        x = kwargs["hidden_states"] if isinstance(mod, DeciLMAttention) else args[0]
        record(x, output[0] if isinstance(output, tuple) else output)

    return module.register_forward_hook(hook, with_kwargs=True)


def input_hook(module: nn.Module, record: Callable[[torch.Tensor], None]):
    """Register a hook calling ``record(input)`` on each call of ``module``."""
    return module.register_forward_pre_hook(lambda mod, args: record(args[0]))


@contextlib.contextmanager
def hooks(handles: Sequence) -> Iterator[None]:
    """Remove the hook ``handles`` on exit, even after an error."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Stop(Exception):
    """Raised by a hook to end a calibration forward once the last needed layer ran."""


@torch.no_grad()
def run_batches(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    last_layer: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Forward every calibration batch ``[B, T]`` (no cache), for the hooks' sake.

    Only the decoder runs (no LM head), and it stops after layer ``last_layer`` when
    given: later layers cannot change what hooks on earlier ones see.
    """
    device = next(model.parameters()).device
    layers = model.model.layers
    handles = []
    if last_layer is not None and last_layer < len(layers) - 1:

        def stop(module, args, output):
            raise _Stop

        handles.append(layers[last_layer].register_forward_hook(stop))
    with hooks(handles):
        for batch in batches:
            with contextlib.suppress(_Stop):
                model.model(input_ids=batch.to(device), use_cache=False)
            if advance is not None:
                advance(1)
