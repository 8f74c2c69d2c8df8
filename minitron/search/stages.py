"""The work folder of a search run: each stage's result on disk, so ``--resume`` continues.

Layout (beside the output folder, which is written atomically at the end)::

    <output>.work/run.json                 the recipe and the parent's layers of this run
    <output>.work/bld/checkpoints/         BLD's Lightning checkpoints (while it trains)
    <output>.work/bld/subblocks.safetensors, bld.json   BLD's result (the stage is done)
    <output>.work/scores.json              replace-1-block scores (the stage is done)
    <output>.work/scores-untrained.json    the same without BLD (``compare: true``)

A run resumed with a different recipe or parent is refused: its stages would not fit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from minitron.errors import MinitronError
from minitron.search.scores import Scores


def work_folder(output: Path) -> Path:
    """``<output>.work`` beside the output folder."""
    return output.parent / f"{output.name}.work"


def open_work(output: Path, run: dict[str, Any], resume: bool, overwrite: bool) -> Path:
    """The run's work folder, checked against ``run`` (recipe and parent layers) on resume.

    Raises:
        MinitronError: Resume without an earlier run, resume of a different run, or a
            fresh run over an earlier one's stages without ``--overwrite``.
    """
    work = work_folder(output)
    record = work / "run.json"
    if resume:
        if not record.is_file():
            raise MinitronError(f"nothing to resume: no earlier run in {work}")
        earlier = json.loads(record.read_text())
        if earlier.get("parent_blocks") != run["parent_blocks"]:
            raise MinitronError(
                f"cannot resume: the parent's layers differ from those of the run in {work} "
                f"({len(earlier.get('parent_blocks', []))} layers there, "
                f"{len(run['parent_blocks'])} now, or different blocks)"
            )
        changed = sorted(
            k for k in set(run["recipe"]) | set(earlier.get("recipe", {}))
            if run["recipe"].get(k) != earlier.get("recipe", {}).get(k)
        )  # fmt: skip
        if changed:
            raise MinitronError(
                f"cannot resume: the recipe differs from the run in {work} "
                f"({', '.join(changed)}); pass --overwrite to start over"
            )
        return work
    if work.exists():
        if not overwrite:
            raise MinitronError(
                f"{work} holds an earlier run: pass --resume to continue it "
                "or --overwrite to start over"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(record, run)
    return work


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a temporary file renamed)."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


def save_scores(path: Path, scores: Scores) -> None:
    write_json(path, {
        "kl": scores.kl, "lm_loss": scores.lm_loss, "agreement": scores.agreement,
        "parent_lm_loss": scores.parent_lm_loss, "tokens": scores.tokens,
    })  # fmt: skip


def load_scores(path: Path) -> Scores | None:
    """A finished scoring stage, or ``None``."""
    if not path.is_file():
        return None
    return Scores(**json.loads(path.read_text()))
