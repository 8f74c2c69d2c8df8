"""Tokenize documents into Megatron's indexed format (``.bin`` + ``.idx``), streaming.

Each document becomes one sequence of the dataset: ``tokenizer(text)`` (with the
BOS the tokenizer itself adds, if any) followed by EOS, or for chat data
``apply_chat_template(messages)`` followed by EOS. Tokenization runs in
``num_proc`` worker processes on batches of documents, in order, with a bounded
number of batches in flight, so memory stays flat however large the source is.
The files are written by megatron-core's ``IndexedDatasetBuilder``, so
Megatron-LM and NeMo read them, and minitron reads theirs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy

from minitron.errors import MinitronError

# Documents per task sent to a worker: large enough to amortise the round trip,
# small enough that a worker's batch is a few MB.
BATCH_DOCUMENTS = 64


def import_indexed_dataset():
    """megatron-core's ``indexed_dataset`` module, without its Transformer Engine / Apex
    warnings (they are about GPU kernels minitron does not use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def vocab_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id), to match datasets to models."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def token_dtype(vocab_size: int) -> type:
    """Megatron's choice: uint16 below 65,500 tokens, int32 above (2 or 4 bytes a token)."""
    return import_indexed_dataset().DType.optimal_dtype(vocab_size)


def encode(tokenizer: Any, document: str | list[dict[str, str]], eos: int) -> list[int]:
    """One document's tokens: text through the tokenizer, chat through its template; + EOS."""
    if isinstance(document, str):
        ids = list(tokenizer(document)["input_ids"])
    else:
        ids = _chat_ids(tokenizer, document)
    return [*ids, eos]


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise MinitronError("format: chat needs a tokenizer with a chat template")
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding (return_dict)
        ids = ids["input_ids"]
    return list(ids)


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, eos: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _WORKER.update(tokenizer=tokenizer, eos=eos)


def _encode_batch(documents: list) -> list[list[int]]:
    return [encode(_WORKER["tokenizer"], doc, _WORKER["eos"]) for doc in documents]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def tokenize(
    documents: Iterable, tokenizer: Any, eos: int, num_proc: int = 1
) -> Iterator[list[list[int]]]:
    """Yield the token ids of ``documents``, in batches, in order.

    With ``num_proc > 1`` batches are tokenized in forked worker processes; at most
    ``2 * num_proc`` batches are in flight, so reading never runs ahead of writing.
    Errors while reading the documents surface here, in the caller's process.
    """
    batches = _chunks(documents, BATCH_DOCUMENTS)
    if num_proc <= 1:
        _init_worker(tokenizer, eos)
        for batch in batches:
            yield _encode_batch(batch)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, eos)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@dataclass
class SourceRecord:
    """What one source became."""

    name: str
    path: str
    format: str
    text_column: str
    documents: int = 0
    tokens: int = 0
    truncated_at_max_tokens: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_indexed(
    prefix: Path,
    token_batches: Iterable[list[list[int]]],
    dtype: type,
    record: SourceRecord,
    max_tokens: int | None = None,
    advance=None,
) -> SourceRecord:
    """Write ``prefix.bin`` / ``prefix.idx``, one sequence per document, in order.

    Stops after the document that reaches ``max_tokens`` (documents are never cut).
    ``advance(n)`` is called with the tokens of each batch written.

    Raises:
        MinitronError: If no document was written (an empty source).
    """
    indexed = import_indexed_dataset()
    builder = indexed.IndexedDatasetBuilder(str(prefix) + ".bin", dtype=dtype)
    try:
        for batch in token_batches:
            written = 0
            for ids in batch:
                builder.add_document(numpy.asarray(ids, dtype=dtype), [len(ids)])
                record.documents += 1
                record.tokens += len(ids)
                written += len(ids)
                if max_tokens is not None and record.tokens >= max_tokens:
                    record.truncated_at_max_tokens = True
                    break
            if advance is not None:
                advance(written)
            if record.truncated_at_max_tokens:
                break
    finally:
        builder.finalize(str(prefix) + ".idx")
    if record.documents == 0:
        raise MinitronError(f"source '{record.name}' ({record.path}) has no documents")
    return record
