"""Reading a ``scores.json`` of ``minitron importance`` back for ``minitron prune``."""

from __future__ import annotations

import json
from pathlib import Path

from minitron.commands.prune_config import PruneConfig
from minitron.errors import MinitronError
from minitron.importance import ImportanceResult
from minitron.io import model_identity
from minitron.prune import scores_block_size


def load_scores(path: str | Path, config: PruneConfig, num_layers: int) -> ImportanceResult:
    """Read a ``scores.json`` and check it fits the recipe and the parent."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MinitronError(f"scores file not found: {path}")
    not_scores = MinitronError(f"{path}: not a scores.json written by minitron importance")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        result = ImportanceResult.from_dict(record)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError):
        raise not_scores from None
    scored = record.get("model_identity") or (
        _identity(record["model"]) if isinstance(record.get("model"), str) else None
    )
    if scored is None:
        raise not_scores
    if scored != _identity(config.parent):
        raise MinitronError(
            f"{path}: scores were computed for {scored}, not for the parent {config.parent}"
        )
    if result.num_layers != num_layers:
        raise MinitronError(
            f"{path}: scores are for {result.num_layers} layers, the parent has {num_layers}"
        )
    blocks = num_layers - result.block_size + 1
    if len(result.layers) != num_layers or len(result.blocks) != blocks:
        raise not_scores
    if result.metric != config.metric:
        raise MinitronError(
            f"{path}: scores use metric '{result.metric}', recipe asks for '{config.metric}'"
        )
    needed = scores_block_size(config, num_layers)
    if needed != 1 and result.block_size != needed:
        raise MinitronError(
            f"{path}: scores have blocks of {result.block_size} layers, dropping to "
            f"{config.target_layers} layers needs blocks of {needed} (--block-size {needed})"
        )
    return result


def _identity(spec: str) -> str:
    """``model_identity`` of a spec, or the spec itself if it no longer resolves."""
    try:
        return model_identity(spec)
    except MinitronError:
        return spec
