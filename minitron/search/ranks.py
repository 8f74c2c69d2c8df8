"""The processes of a search run on several devices or nodes: who does what, and sums.

A search on ``devices × num_nodes`` processes starts them with Lightning (the same
launcher ``minitron distill`` uses: on one node it re-runs the command once per extra
device; on many nodes torchrun or SLURM start every process). Every process loads the
parent; BLD trains data-parallel (Lightning's DDP, each rank reading its own
calibration batches), and the scoring stages split the held-out batches across ranks
and add up their sums. Rank 0 alone writes the work folder and runs the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from minitron.errors import MinitronError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def zero(self) -> bool:
        """Whether this process writes results."""
        return self.rank == 0

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of ``items``: every ``world``-th one from ``rank``."""
        return list(items)[self.rank :: self.world]

    def sum(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """Element-wise sums of ``values`` over all ranks (in float64)."""
        if self.world == 1:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_zero(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` on rank 0 only; every rank gets its result.

        If it fails, rank 0 raises the error and the other ranks stop quietly (exit
        code 0, so Lightning's launcher does not kill rank 0 before it reports).
        """
        if self.world == 1:
            return work(*args)
        result, failure = None, None
        if self.zero:
            try:
                result = work(*args)
            except BaseException as err:  # noqa: BLE001  (re-raised below, after sharing)
                failure = err
        result, failed = self.share((result, failure is not None))
        if failure is not None:
            raise failure
        if failed:
            raise SystemExit(0)  # rank 0 says why
        return result

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.world > 1:
            torch.distributed.barrier()


def launch(accelerator: str, devices: int, num_nodes: int) -> Ranks:
    """Start (or join) the run's processes; on one device, just this one.

    Other ranks draw no progress bars (rank 0's show the run); their errors still print.
    """
    if devices == 1 and num_nodes == 1:
        return Ranks()
    from lightning.fabric import Fabric

    from minitron import progress
    from minitron.distill.run import quiet_lightning

    try:
        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy="ddp")  # fmt: skip
    except (RuntimeError, ValueError) as err:  # Lightning's own checks of the devices
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MinitronError(
            f"cannot run on devices: {devices} x num_nodes: {num_nodes} ({accelerator}): {reason}"
        ) from None
    quiet_lightning()
    fabric.launch()
    ranks = Ranks(fabric.global_rank, fabric.world_size, fabric.local_rank)
    if not ranks.zero:
        progress.BARS = False
    return ranks
