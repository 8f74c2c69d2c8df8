"""The documents of one ``minitron data prepare`` source, with where each came from.

A source is the embedded ``stdlib`` corpus, a local ``.txt`` / ``.jsonl`` / ``.parquet``
file or a folder of them, or a Hugging Face Hub dataset (streamed). Text sources
yield strings; chat sources yield message lists in the OpenAI shape
(``[{"role": ..., "content": ...}]``), converted from ShareGPT's
(``[{"from": "human", "value": ...}]``) where needed. Every error names the file and
line (or row) it found and is one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minitron.errors import MinitronError, first_line

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
# ShareGPT speaker names -> OpenAI roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool"}  # fmt: skip


@dataclass(frozen=True)
class Source:
    """One source of documents.

    Attributes:
        name: The output prefix: ``DIR/<name>.bin`` / ``.idx``.
        path: ``stdlib``, a local file or folder, or a Hub dataset id.
        text_column: The JSON key / column of the text (``text``) or messages (``messages``).
        format: ``text`` or ``chat``.
        subset: Hub dataset configuration.
        split: Hub dataset split.
    """

    name: str
    path: str
    text_column: str = "text"
    format: str = "text"
    subset: str | None = None
    split: str = "train"


def iter_documents(source: Source) -> Iterator[str | list[dict[str, str]]]:
    """Yield every document of ``source`` in its order: text, or chat messages.

    Raises:
        MinitronError: On a missing file, a bad JSON line, a missing column, or a
            malformed conversation; one line naming the file and line.
    """
    if source.path == "stdlib":
        if source.format == "chat":
            raise MinitronError(f"source '{source.name}': stdlib is text, not chat")
        from minitron.corpus import stdlib_documents

        yield from stdlib_documents()
        return
    path = Path(source.path).expanduser()
    if path.exists():
        for value, where in file_values(path, source.text_column):
            yield _document(value, where, source)
        return
    if source.path.startswith((".", "/", "~")) or Path(source.path).suffix in FILE_SUFFIXES:
        raise MinitronError(f"source '{source.name}': not found: {source.path}")
    for value, where in _hub_values(source):
        yield _document(value, where, source)


def _document(value: Any, where: str, source: Source) -> str | list[dict[str, str]]:
    if source.format == "chat":
        return chat_messages(value, where)
    if not isinstance(value, str):
        raise MinitronError(f"{where}: '{source.text_column}' is not text (format: chat?)")
    return value


def chat_messages(value: Any, where: str) -> list[dict[str, str]]:
    """``value`` as OpenAI-shape messages; ShareGPT's ``from`` / ``value`` converted.

    Raises:
        MinitronError: If ``value`` is not a non-empty list of messages each with a
            role (``role`` or ``from``) and text content (``content`` or ``value``).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise MinitronError(f"{where}: messages are text, not a list of messages") from None
    if not isinstance(value, list) or not value:
        raise MinitronError(f"{where}: messages must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise MinitronError(f"{where}: messages[{i}] is not a mapping")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if role is None:
            raise MinitronError(f"{where}: messages[{i}] has no 'role'")
        if not isinstance(content, str):
            raise MinitronError(f"{where}: messages[{i}] has no text 'content'")
        messages.append({"role": SHAREGPT_ROLES.get(role, role), "content": content})
    return messages


def file_values(path: Path, column: str) -> Iterator[tuple[Any, str]]:
    """``(value, where)`` of every non-empty record of a local file or folder of files."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES and p.is_file())
        if not files:
            raise MinitronError(f"no .txt, .jsonl or .parquet files in {path}")
    elif path.suffix in FILE_SUFFIXES:
        files = [path]
    else:
        raise MinitronError(f"unsupported data file {path} (use .txt, .jsonl or .parquet)")
    for file in files:
        if file.suffix == ".txt":
            text = file.read_text(encoding="utf-8", errors="replace")
            if text:
                yield text, str(file)
        elif file.suffix == ".jsonl":
            yield from _jsonl_values(file, column)
        else:
            yield from _parquet_values(file, column)


def _jsonl_values(file: Path, column: str) -> Iterator[tuple[Any, str]]:
    with file.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise MinitronError(f"{where}: not valid JSON") from None
            if not isinstance(record, dict) or column not in record:
                raise MinitronError(f"{where}: no '{column}' key (set text_column)")
            if record[column] not in (None, ""):
                yield record[column], where


def _parquet_values(file: Path, column: str) -> Iterator[tuple[Any, str]]:
    import pyarrow.parquet as pq  # ships with datasets

    try:
        handle = pq.ParquetFile(file)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise MinitronError(f"{file}: not a readable parquet file: {first_line(err)}") from None
    if column not in handle.schema_arrow.names:
        names = ", ".join(handle.schema_arrow.names)
        raise MinitronError(f"{file}: no column '{column}' (columns: {names})")
    row = 0
    for batch in handle.iter_batches(columns=[column], batch_size=1024):  # memory stays flat
        for value in batch.column(0).to_pylist():
            row += 1
            if value not in (None, ""):
                yield value, f"{file}: row {row}"


def _hub_values(source: Source) -> Iterator[tuple[Any, str]]:
    import datasets

    try:
        dataset = datasets.load_dataset(
            source.path, source.subset, split=source.split, streaming=True
        )
    except Exception as err:  # datasets raises many types; the user needs one line
        raise MinitronError(f"could not load dataset '{source.path}': {first_line(err)}") from None
    for row, record in enumerate(dataset, 1):
        if source.text_column not in record:
            raise MinitronError(
                f"dataset '{source.path}' row {row}: no column '{source.text_column}' "
                f"(columns: {', '.join(record)}; set text_column)"
            )
        if record[source.text_column] not in (None, ""):
            yield record[source.text_column], f"dataset '{source.path}' row {row}"
