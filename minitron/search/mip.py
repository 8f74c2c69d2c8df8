"""The Puzzle mixed-integer program: one variant per layer, least summed score, within budgets.

Variables ``x[l, v] ∈ {0, 1}``: layer ``l`` takes variant ``v``. Minimise
``Σ score[l][v] · x[l, v]`` subject to ``Σ_v x[l, v] = 1`` for every layer and, for each
budget, ``offset + Σ cost[l][v] · x[l, v] ≤ limit``. Further solutions add the paper's
diversity constraint: solution ``k`` shares at most ``max_shared`` layer choices with
every earlier one (``Σ_l x[l, chosen_j(l)] ≤ max_shared``). Solved with scipy's
``milp`` (HiGHS), which ships with scipy (a dependency of lm-eval already): exact
branch and bound, a time limit and a reported optimality gap, no extra package.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from minitron.errors import MinitronError


@dataclass
class Choice:
    """One solution: the variant index of each layer, its summed score and costs."""

    variants: list[int]
    score: float
    costs: dict[str, float] = field(default_factory=dict)


@dataclass
class SolverRecord:
    """What the solver reported, per solution."""

    status: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    mip_gap: list[float | None] = field(default_factory=list)
    time_limit: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "scipy.optimize.milp (HiGHS)", "status": self.status,
                "seconds": self.seconds, "mip_gap": self.mip_gap,
                "time_limit": self.time_limit}  # fmt: skip


def smallest(costs: Sequence[Sequence[float]], offset: float = 0.0) -> float:
    """The least a budget can be: every layer at its cheapest variant."""
    return offset + sum(min(row) for row in costs)


def solve(
    scores: Sequence[Sequence[float]],
    costs: Mapping[str, Sequence[Sequence[float]]],
    limits: Mapping[str, float],
    offsets: Mapping[str, float] | None = None,
    solutions: int = 1,
    max_shared: int | None = None,
    time_limit: float = 60.0,
) -> tuple[list[Choice], SolverRecord]:
    """Up to ``solutions`` choices, best first, each obeying every limit.

    Args:
        scores: ``scores[l][v]``, lower is better (replace-1-block KL).
        costs: Per budget name, ``cost[l][v]`` (same shape as ``scores``).
        limits: Per budget name, the most ``offset + Σ cost`` may be.
        offsets: Per budget name, the part outside the layers (non-layer parameters).
        solutions: How many distinct solutions.
        max_shared: Most layer choices a later solution shares with each earlier one
            (default: ``L - 1``, any difference).
        time_limit: Seconds per solve.

    Raises:
        MinitronError: An infeasible budget (naming the smallest feasible value), a
            budget without costs, or no solution at all.
    """
    offsets = dict(offsets or {})
    sizes = [len(row) for row in scores]
    layers, total = len(sizes), sum(sizes)
    for name, limit in limits.items():
        if name not in costs:
            raise MinitronError(f"unknown constraint '{name}' (known: {', '.join(costs)})")
        least = smallest(costs[name], offsets.get(name, 0.0))
        if least > limit:
            raise MinitronError(
                f"{name} budget {limit:,.6g} is infeasible: the smallest choice needs {least:,.6g}"
            )
    from scipy.optimize import Bounds, LinearConstraint, milp

    starts = numpy.cumsum([0, *sizes[:-1]])
    objective = numpy.concatenate([numpy.asarray(row, dtype=float) for row in scores])
    one_each = numpy.zeros((layers, total))
    for layer, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        one_each[layer, start : start + size] = 1
    base = [LinearConstraint(one_each, 1, 1)]
    for name, limit in limits.items():
        row = numpy.concatenate([numpy.asarray(r, dtype=float) for r in costs[name]])
        base.append(LinearConstraint(row[None], -numpy.inf, limit - offsets.get(name, 0.0)))
    shared = layers - 1 if max_shared is None else max_shared
    found: list[Choice] = []
    record = SolverRecord(time_limit=time_limit)
    diversity: list[Any] = []
    for _ in range(solutions):
        start_time = time.perf_counter()
        result = milp(
            objective,
            constraints=base + diversity,
            integrality=numpy.ones(total),
            bounds=Bounds(0, 1),
            options={"time_limit": time_limit, "disp": False},
        )
        record.seconds.append(round(time.perf_counter() - start_time, 4))
        record.status.append(result.message)
        record.mip_gap.append(getattr(result, "mip_gap", None))
        if result.x is None:
            break
        chosen = [
            int(numpy.argmax(result.x[s : s + n])) for s, n in zip(starts, sizes, strict=True)
        ]
        found.append(_choice(chosen, scores, costs, offsets))
        indicator = numpy.zeros(total)
        indicator[[s + v for s, v in zip(starts, chosen, strict=True)]] = 1
        diversity.append(LinearConstraint(indicator[None], -numpy.inf, shared))
    if not found:
        raise MinitronError(
            "no architecture meets every budget together (each alone is feasible): "
            + ", ".join(f"{n} ≤ {v:,.6g}" for n, v in limits.items())
        )
    return found, record


def _choice(
    chosen: list[int],
    scores: Sequence[Sequence[float]],
    costs: Mapping[str, Sequence[Sequence[float]]],
    offsets: Mapping[str, float],
) -> Choice:
    score = sum(scores[layer][v] for layer, v in enumerate(chosen))
    totals = {
        name: offsets.get(name, 0.0) + sum(rows[layer][v] for layer, v in enumerate(chosen))
        for name, rows in costs.items()
    }
    return Choice(chosen, score, totals)


def sweep(
    scores: Sequence[Sequence[float]],
    costs: Mapping[str, Sequence[Sequence[float]]],
    offsets: Mapping[str, float],
    name: str = "params",
    points: int = 12,
    time_limit: float = 10.0,
) -> list[dict[str, float]]:
    """The best summed score at ``points`` budgets of ``name`` from its smallest to its
    largest choice (the frontier), each with every cost of its solution."""
    least = smallest(costs[name], offsets.get(name, 0.0))
    most = offsets.get(name, 0.0) + sum(max(row) for row in costs[name])
    frontier = []
    for i in range(points):
        limit = least + (most - least) * i / max(points - 1, 1)
        found, _ = solve(scores, costs, {name: limit}, offsets, time_limit=time_limit)
        frontier.append({"budget": limit, "score": found[0].score, **found[0].costs})
    return frontier
