"""Presets: the task settings and published numbers of the seed models' cards.

Each preset reproduces one model card's evaluation exactly: lm-eval task names,
shot counts and the metric the card reports, with the card's number (percent)
printed beside minitron's results. Sources:
- ``minitron-4b``: the card of nvidia/Llama-3.1-Minitron-4B-Depth-Base (MMLU
  5-shot; HellaSwag, Winogrande, GSM8K, ARC-Challenge zero-shot; MBPP).
- ``nemotron-51b``: the card of nvidia/Llama-3_1-Nemotron-51B-Instruct.

Metric choices where a card does not name one: lm-eval's leaderboard
conventions (``acc_norm`` for HellaSwag and ARC-Challenge, ``acc`` for MMLU,
Winogrande and TruthfulQA MC2, GSM8K's ``strict-match`` exact match, MBPP's
pass@1 with lm-eval's own 3-shot prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.errors import MinitronError


@dataclass(frozen=True)
class PresetTask:
    """One row of a card.

    Attributes:
        task: lm-eval task or group name.
        num_fewshot: Shots, as on the card.
        metric: lm-eval metric key (``acc_norm``; ``exact_match,strict-match``
            when a filter is part of it).
        published: The card's number in percent, or None.
    """

    task: str
    num_fewshot: int
    metric: str
    published: float | None


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # the card's model, for the record
    tasks: tuple[PresetTask, ...]

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    def row(self, task: str) -> PresetTask | None:
        return next((t for t in self.tasks if t.task == task), None)


PRESETS = {
    "minitron-4b": Preset(
        "minitron-4b",
        "nvidia/Llama-3.1-Minitron-4B-Depth-Base",
        (
            PresetTask("mmlu", 5, "acc", 58.7),
            PresetTask("hellaswag", 0, "acc_norm", 73.2),
            PresetTask("winogrande", 0, "acc", 72.1),
            PresetTask("gsm8k", 0, "exact_match,strict-match", 16.8),
            PresetTask("arc_challenge", 0, "acc_norm", 52.6),
            PresetTask("mbpp", 3, "pass_at_1", 30.7),
        ),
    ),
    "nemotron-51b": Preset(
        "nemotron-51b",
        "nvidia/Llama-3_1-Nemotron-51B-Instruct",
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
