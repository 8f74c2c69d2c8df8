"""``minitron data prepare``: its typed config, and sources -> tokens -> indexed datasets.

Sources are read and tokenized by ``minitron.prepared``; this module loads the
tokenizer, writes every source into a temporary folder renamed on success, and
records what was written in ``data.json``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from minitron import __version__
from minitron.config import config_to_dict
from minitron.errors import MinitronError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_COLUMN = {"text": "text", "chat": "messages"}


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One source of a ``data prepare`` recipe.

    Attributes:
        name: Output prefix: ``DIR/<name>.bin`` and ``DIR/<name>.idx``.
        path: ``stdlib`` (the embedded corpus), a local ``.txt`` / ``.jsonl`` /
            ``.parquet`` file or folder, or a Hub dataset id (streamed).
        format: ``text``, or ``chat`` (messages through the tokenizer's chat template).
        text_column: JSON key or column; default ``text`` for text, ``messages`` for chat.
        subset: Hub dataset configuration.
        split: Hub dataset split.
        max_tokens: Stop this source after the document that reaches it.
    """

    name: str
    path: str
    format: Literal["text", "chat"] = "text"
    text_column: str | None = None
    subset: str | None = None
    split: str = "train"
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise MinitronError(
                f"source name {self.name!r} must be a file name (letters, digits, _ . -)"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise MinitronError(f"source '{self.name}': max_tokens must be at least 1")

    @property
    def column(self) -> str:
        return self.text_column or DEFAULT_COLUMN[self.format]


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """``minitron data prepare``: tokenize sources once into Megatron indexed datasets.

    Attributes:
        tokenizer: Model spec whose tokenizer is used (the student's and teacher's).
        sources: The sources, each written as ``DIR/<name>.bin`` + ``.idx``.
        num_proc: Tokenizer worker processes.
        max_tokens: Default per-source token limit (a source's own ``max_tokens`` wins).
        output: Output folder; default ``runs/data/<recipe name>``.
        trust_remote_code: Allow a Hub tokenizer's own code to run.
    """

    sources: list[SourceConfig]
    tokenizer: str = "smollm2-135m"
    num_proc: int = 1
    max_tokens: int | None = None
    output: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.sources:
            raise MinitronError("sources: give at least one source")
        names = [s.name for s in self.sources]
        for name in names:
            if names.count(name) > 1:
                raise MinitronError(f"sources: the name '{name}' is used twice")
        if self.num_proc < 1:
            raise MinitronError(f"num_proc must be at least 1 (got {self.num_proc})")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise MinitronError(f"max_tokens must be at least 1 (got {self.max_tokens})")


def run_prepare(config: PrepareConfig, output: str | Path, overwrite: bool = False) -> dict:
    """Tokenize every source into ``output``; return the ``data.json`` record.

    Checks the output folder and the tokenizer before reading any source; writes into a
    temporary folder renamed on success, so a malformed line leaves nothing behind.
    """
    from minitron.io import atomic_output_dir, check_output_dir, load_tokenizer
    from minitron.prepared.build import (
        SourceRecord,
        token_dtype,
        tokenize,
        vocab_hash,
        write_indexed,
    )
    from minitron.prepared.sources import Source, iter_documents
    from minitron.progress import counting

    output = check_output_dir(output, overwrite)
    tokenizer = load_tokenizer(config.tokenizer, config.trust_remote_code)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MinitronError(f"tokenizer of {config.tokenizer} has no EOS token to end documents")
    if any(s.format == "chat" for s in config.sources) and not tokenizer.chat_template:
        raise MinitronError(f"tokenizer of {config.tokenizer} has no chat template (format: chat)")
    dtype = token_dtype(len(tokenizer))
    records = []
    start = time.perf_counter()
    with atomic_output_dir(output, overwrite) as tmp:
        for spec in config.sources:
            source = Source(spec.name, spec.path, spec.column, spec.format, spec.subset, spec.split)
            record = SourceRecord(spec.name, spec.path, spec.format, spec.column)
            limit = spec.max_tokens or config.max_tokens
            documents = iter_documents(source)
            with counting(f"{spec.name}", limit) as advance:
                write_indexed(
                    tmp / spec.name,
                    tokenize(documents, tokenizer, eos, config.num_proc),
                    dtype,
                    record,
                    limit,
                    advance,
                )
            records.append(record)
        seconds = time.perf_counter() - start
        manifest = _manifest(config, tokenizer, dtype, records, vocab_hash(tokenizer), seconds)
        (tmp / "data.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest | {"output": str(output)}


def _manifest(
    config: PrepareConfig, tokenizer: Any, dtype: type, records: list, vocab: str, seconds: float
) -> dict[str, Any]:
    import numpy

    size = numpy.dtype(dtype).itemsize
    tokens = sum(r.tokens for r in records)
    return {
        "format": "megatron-indexed",
        "note": "each source is <name>.bin + <name>.idx (megatron-core IndexedDataset); "
        "one sequence per document: tokens then EOS",
        "tokenizer": config.tokenizer,
        "tokenizer_name": getattr(tokenizer, "name_or_path", None),
        "vocab_size": len(tokenizer),
        "vocab_hash": vocab,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "dtype": numpy.dtype(dtype).name,
        "bytes_per_token": size,
        "sources": {r.name: r.to_dict() | {"bytes": r.tokens * size} for r in records},
        "documents": sum(r.documents for r in records),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / max(seconds, 1e-9)),
        "num_proc": config.num_proc,
        "recipe": config_to_dict(config),
        "minitron_version": __version__,
    }
