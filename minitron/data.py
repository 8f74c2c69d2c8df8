"""Text data: read documents from a source, tokenize, pack into fixed-length sequences.

Sources (``DataConfig.source``):
- ``stdlib``: the embedded corpus (see ``minitron.corpus``), offline everywhere.
- a local ``.txt`` / ``.jsonl`` / ``.parquet`` file, or a folder of them.
- anything else: a Hugging Face Hub dataset id (``subset``, ``split``,
  ``text_column``, ``streaming``).

Documents are tokenized, joined with the EOS token and cut into sequences of
``seq_len`` tokens, each opened by BOS when the tokenizer adds one to texts.
The first ``samples`` sequences are the calibration set, the next ``heldout``
the held-out set used only to report perplexity.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from minitron.config import DataConfig
from minitron.corpus import stdlib_documents
from minitron.errors import MinitronError, first_line
from minitron.prepared.sources import FILE_SUFFIXES, file_values


@dataclass
class TextData:
    """Packed token sequences.

    Attributes:
        calibration: ``[samples, seq_len]`` token ids for scoring.
        heldout: ``[heldout, seq_len]`` token ids for perplexity only.
        info: What was read (source, counts), for the records written to disk.
    """

    calibration: torch.Tensor
    heldout: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def batches(tokens: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split ``[N, T]`` token ids into ``[<=batch_size, T]`` batches."""
    return list(torch.split(tokens, batch_size)) if len(tokens) else []


def iter_documents(config: DataConfig) -> Iterator[str]:
    """Yield the text documents of ``config.source``, one string each."""
    source = config.source
    if source == "stdlib":
        yield from stdlib_documents(seed=config.seed)
        return
    path = Path(source).expanduser()
    if path.exists():
        yield from _file_documents(path, config.text_column)
        return
    if source.startswith((".", "/", "~")) or Path(source).suffix in FILE_SUFFIXES:
        raise MinitronError(f"data not found: {source}")
    yield from _hub_documents(config)


def _file_documents(path: Path, column: str) -> Iterator[str]:
    for value, _ in file_values(path, column):
        yield str(value)


def _hub_documents(config: DataConfig) -> Iterator[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(
            config.source, config.subset, split=config.split, streaming=config.streaming
        )
    except Exception as err:  # datasets raises many types; the user needs one line
        raise MinitronError(
            f"could not load dataset '{config.source}': {first_line(err)}"
        ) from None
    columns = dataset.column_names or []
    if columns and config.text_column not in columns:
        raise MinitronError(
            f"dataset '{config.source}' has no column '{config.text_column}' "
            f"(columns: {', '.join(columns)}; set data.text_column)"
        )
    for row in dataset:
        if config.text_column not in row:  # streamed datasets may not list columns upfront
            raise MinitronError(
                f"dataset '{config.source}' has no column '{config.text_column}' "
                f"(columns: {', '.join(row)}; set data.text_column)"
            )
        if row[config.text_column]:
            yield str(row[config.text_column])


def leading_bos(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts in front of a text itself, else ``None``.

    Llama-2 and Llama-3 tokenizers add BOS to every text, so their models
    always saw it first. A tokenizer that names a BOS token but never adds it
    (SmolLM2's ``<|im_start|>`` is a chat marker) gets none.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    return bos if tokenizer("a")["input_ids"][:1] == [bos] else None


def pack(documents: Iterable[str], tokenizer: Any, seq_len: int, count: int) -> torch.Tensor:
    """Tokenize documents and pack them into ``count`` sequences of ``seq_len`` tokens.

    Documents are separated by the EOS token. When the tokenizer starts texts
    with BOS (``leading_bos``), every packed sequence starts with BOS followed
    by ``seq_len - 1`` tokens of the stream, since such models expect it first
    and a packed sequence usually starts mid-document. Reading stops as soon
    as enough tokens are in hand, so a large corpus is never tokenized whole.

    Returns:
        ``[n, seq_len]`` int64 token ids, ``n <= count`` (fewer if text runs out).
    """
    bos = leading_bos(tokenizer)
    body = seq_len - (bos is not None)
    needed = body * count
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in documents:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
        if len(stream) >= needed:
            break
    n = min(count, len(stream) // body)
    rows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    if bos is not None:
        rows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)
    return rows


def load_text_data(config: DataConfig, tokenizer: Any) -> TextData:
    """Read, tokenize and pack ``config.source`` into calibration and held-out sets.

    Raises:
        MinitronError: If the source is missing or gives too little text.
    """
    total = config.samples + config.heldout
    tokens = pack(iter_documents(config), tokenizer, config.seq_len, total)
    if len(tokens) < total:
        raise MinitronError(
            f"data '{config.source}' gave {len(tokens)} sequences of {config.seq_len} tokens, "
            f"need {total} (data.samples={config.samples} + data.heldout={config.heldout})"
        )
    info = {
        "source": config.source,
        "subset": config.subset,
        "split": config.split,
        "samples": config.samples,
        "heldout": config.heldout,
        "seq_len": config.seq_len,
        "calibration_tokens": config.samples * config.seq_len,
        "seed": config.seed,
    }
    if config.source == "stdlib":
        info["python"] = sys.version.split()[0]
    return TextData(tokens[: config.samples], tokens[config.samples :], info)
