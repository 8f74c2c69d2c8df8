"""Presets: the task settings and published numbers of the seed models.

Each preset reproduces one model's published evaluation: lm-eval task names, shot
counts and the metric, with the published number (percent) of the model and, where
the same table gives it, of its parent, printed beside minitron's results. Sources:

- ``minitron-4b``: Llama-3.1-Minitron-4B-Depth-Base and its parent Llama-3.1-8B in
  the technical report (arXiv 2408.11796, table 1), whose column headers give the
  shots: Winogrande 5, ARC-Challenge 25, MMLU 5, HellaSwag 10, GSM8K 5, TruthfulQA 0.
  The model card lists the same numbers under a "Zero-shot performance" header; the
  report's shots are used (docs/eval.md says why). MBPP is on the card only, with no
  shot count and no parent number.
- ``nemotron-51b``: the card of nvidia/Llama-3_1-Nemotron-51B-Instruct (shots as
  stated there; no parent numbers).

Metric choices where a source does not name one: lm-eval's leaderboard
conventions (``acc_norm`` for HellaSwag and ARC-Challenge, ``acc`` for MMLU,
Winogrande and TruthfulQA MC2, GSM8K's ``strict-match`` exact match, MBPP's
pass@1 with lm-eval's own 3-shot prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.errors import MinitronError


@dataclass(frozen=True)
class PresetTask:
    """One row of a published table.

    Attributes:
        task: lm-eval task or group name.
        num_fewshot: Shots, as published.
        metric: lm-eval metric key (``acc_norm``; ``exact_match,strict-match``
            when a filter is part of it).
        published: The model's published number in percent, or None.
        parent: The parent's published number in percent (same table), or None.
    """

    task: str
    num_fewshot: int
    metric: str
    published: float | None
    parent: float | None = None


@dataclass(frozen=True)
class Preset:
    """A published evaluation: the model, its parent, the source and the rows.

    Attributes:
        name: The preset's name (``--preset``).
        model: The published model, for the record.
        parent: The model it was compressed from, when its numbers are given too.
        source: Where the numbers come from.
        tasks: The rows.
    """

    name: str
    model: str
    parent: str | None
    source: str
    tasks: tuple[PresetTask, ...]

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    def row(self, task: str) -> PresetTask | None:
        return next((t for t in self.tasks if t.task == task), None)

    def record(self) -> dict[str, str | None]:
        """The ``published`` entry of ``results.json``: whose numbers and from where."""
        return {"model": self.model, "parent": self.parent, "source": self.source}


PRESETS = {
    "minitron-4b": Preset(
        "minitron-4b",
        "nvidia/Llama-3.1-Minitron-4B-Depth-Base",
        "meta-llama/Llama-3.1-8B",
        "arXiv 2408.11796 table 1 (shots from its column headers); MBPP: the model card",
        (
            PresetTask("mmlu", 5, "acc", 58.7, 65.3),
            PresetTask("hellaswag", 10, "acc_norm", 73.2, 81.8),
            PresetTask("winogrande", 5, "acc", 72.1, 77.3),
            PresetTask("gsm8k", 5, "exact_match,strict-match", 16.8, 48.6),
            PresetTask("arc_challenge", 25, "acc_norm", 52.6, 57.9),
            PresetTask("truthfulqa_mc2", 0, "acc", 38.2, 45.0),
            PresetTask("mbpp", 3, "pass_at_1", 30.7),
        ),
    ),
    "nemotron-51b": Preset(
        "nemotron-51b",
        "nvidia/Llama-3_1-Nemotron-51B-Instruct",
        None,
        "the Llama-3_1-Nemotron-51B-Instruct model card",
        (
            PresetTask("mmlu", 5, "acc", 80.2),
            PresetTask("gsm8k", 5, "exact_match,strict-match", 91.43),
            PresetTask("winogrande", 5, "acc", 84.53),
            PresetTask("arc_challenge", 25, "acc_norm", 69.20),
            PresetTask("hellaswag", 10, "acc_norm", 85.58),
            PresetTask("truthfulqa_mc2", 0, "acc", 58.63),
        ),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        MinitronError: If there is none.
    """
    if name not in PRESETS:
        raise MinitronError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]
