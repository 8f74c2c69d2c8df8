"""``minitron data prepare``: sources -> Megatron indexed datasets, read back by megatron-core."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from minitron.commands.data import PrepareConfig, run_prepare
from minitron.config import parse_config
from minitron.errors import MinitronError
from tests.conftest import char_tokenizer, save_tiny_checkpoint
from tests.test_cli import assert_user_error, minitron, write_recipe

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def indexed(prefix):
    """megatron-core's own reader. Keep it alive while using its items: they are views of
    its memory map, which closes when the dataset is collected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(str(prefix))


def documents(prefix) -> list[list[int]]:
    """Every document of a prepared dataset, copied out of the memory map."""
    dataset = indexed(prefix)
    return [dataset[i].tolist() for i in range(len(dataset))]


@pytest.fixture
def chat_checkpoint(tmp_path):
    """A tiny model whose character tokenizer has a chat template."""
    folder = save_tiny_checkpoint(tmp_path / "tiny-chat")
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def prepare(tmp_path, tokenizer, sources, **extra):
    config = parse_config(PrepareConfig, {"tokenizer": str(tokenizer), "sources": sources} | extra)
    return run_prepare(config, tmp_path / "out")


def test_text_jsonl_documents_are_tokens_then_eos(tmp_path, tiny_checkpoint):
    texts = ["hello world", "a second document", "x" * 300]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    manifest = prepare(
        tmp_path, tiny_checkpoint, [{"name": "docs", "path": str(tmp_path / "docs.jsonl")}]
    )
    dataset = indexed(tmp_path / "out/docs")
    tokenizer = char_tokenizer()
    assert len(dataset) == 3
    for i, text in enumerate(texts):
        assert dataset[i].tolist() == tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert list(dataset.document_indices) == [0, 1, 2, 3]  # one sequence per document
    record = manifest["sources"]["docs"]
    assert (record["documents"], record["tokens"]) == (3, sum(len(t) + 1 for t in texts))
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 98
    assert (
        json.loads((tmp_path / "out/data.json").read_text())["vocab_hash"] == manifest["vocab_hash"]
    )


def test_chat_sources_go_through_the_chat_template(tmp_path, chat_checkpoint):
    openai = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]]
    sharegpt = [[{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]]
    (tmp_path / "openai.jsonl").write_text(json.dumps({"messages": openai[0]}) + "\n")
    (tmp_path / "sharegpt.jsonl").write_text(json.dumps({"conversations": sharegpt[0]}) + "\n")
    prepare(tmp_path, chat_checkpoint, [
        {"name": "openai", "path": str(tmp_path / "openai.jsonl"), "format": "chat"},
        {"name": "sharegpt", "path": str(tmp_path / "sharegpt.jsonl"), "format": "chat",
         "text_column": "conversations"},
    ])  # fmt: skip
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    expected = tokenizer.apply_chat_template(openai[0], tokenize=True, return_dict=False)
    assert documents(tmp_path / "out/openai")[0] == list(expected) + [eos]
    as_openai = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    expected = tokenizer.apply_chat_template(as_openai, tokenize=True, return_dict=False)
    assert documents(tmp_path / "out/sharegpt")[0] == list(expected) + [eos]


def test_workers_write_the_same_files_and_max_tokens_stops(tmp_path, tiny_checkpoint):
    (tmp_path / "many.jsonl").write_text(
        "".join(
            json.dumps({"text": f"document number {i} " * (i % 7 + 1)}) + "\n" for i in range(500)
        )
    )
    source = {"name": "many", "path": str(tmp_path / "many.jsonl")}
    one = prepare(tmp_path / "a", tiny_checkpoint, [source], num_proc=1)
    two = prepare(tmp_path / "b", tiny_checkpoint, [source], num_proc=2)
    assert one["tokens"] == two["tokens"]
    for suffix in (".bin", ".idx"):
        a = (tmp_path / "a/out/many").with_suffix(suffix).read_bytes()
        assert a == (tmp_path / "b/out/many").with_suffix(suffix).read_bytes()
    cut = prepare(tmp_path / "c", tiny_checkpoint, [source | {"max_tokens": 1000}])
    record = cut["sources"]["many"]
    assert record["truncated_at_max_tokens"] and 1000 <= record["tokens"] < 1000 + 200
    assert len(indexed(tmp_path / "c/out/many")) == record["documents"] < 500


def test_parquet_and_txt_sources(tmp_path, tiny_checkpoint):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["one", "", "three"]}), tmp_path / "d.parquet")
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("first file")
    (folder / "b.txt").write_text("second file")
    manifest = prepare(tmp_path, tiny_checkpoint, [
        {"name": "pq", "path": str(tmp_path / "d.parquet"), "text_column": "body"},
        {"name": "txt", "path": str(folder)},
    ])  # fmt: skip
    assert manifest["sources"]["pq"]["documents"] == 2  # the empty row is skipped
    assert manifest["sources"]["txt"]["documents"] == 2
    tokenizer = char_tokenizer()
    assert documents(tmp_path / "out/txt")[1] == tokenizer("second file")["input_ids"] + [1]


@pytest.mark.parametrize(
    "content, column, form, message",
    [
        ('{"text": "ok"}\n{"text": \n', "text", "text", "bad.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', "text", "text", "bad.jsonl:2: no 'text' key"),
        ("\n\n", "text", "text", "source 'bad' ("),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}\n',
            "messages", "chat", "bad.jsonl:1: messages[1] has no 'role'",
        ),
    ],
    ids=["bad-json", "missing-column", "empty", "no-role"],
)  # fmt: skip
def test_malformed_sources_fail_with_file_and_line(
    tmp_path, chat_checkpoint, content, column, form, message
):
    (tmp_path / "bad.jsonl").write_text(content)
    source = {
        "name": "bad",
        "path": str(tmp_path / "bad.jsonl"),
        "text_column": column,
        "format": form,
    }
    with pytest.raises(MinitronError, match=re.escape(message)):
        prepare(
            tmp_path,
            chat_checkpoint,
            [{"name": "good", "path": "stdlib", "max_tokens": 50}, source],
        )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_malformed_line_is_one_line_and_exit_2(tmp_path, tiny_checkpoint):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    recipe = write_recipe(
        tmp_path,
        f"tokenizer: {tiny_checkpoint}\nsources:\n  - {{name: bad, path: {tmp_path}/bad.jsonl}}\n",
    )
    result = minitron("data", "prepare", recipe, "--output", tmp_path / "out")
    assert_user_error(result, "bad.jsonl:2: not valid JSON")
    assert not (tmp_path / "out").exists()


def test_recipe_errors(tiny_checkpoint):
    with pytest.raises(MinitronError, match="used twice"):
        parse_config(
            PrepareConfig, {"sources": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}
        )
    with pytest.raises(MinitronError, match="must be a file name"):
        parse_config(PrepareConfig, {"sources": [{"name": "../up", "path": "x"}]})
    with pytest.raises(MinitronError, match="no chat template"):
        run_prepare(
            parse_config(PrepareConfig, {
                "tokenizer": str(tiny_checkpoint),
                "sources": [{"name": "c", "path": "x.jsonl", "format": "chat"}],
            }),
            tiny_checkpoint.parent / "out",
        )  # fmt: skip


@pytest.mark.slow
def test_embedded_corpus_prepared_opens_in_megatron_and_matches_every_document(tmp_path):
    from minitron.corpus import stdlib_documents
    from minitron.io import load_tokenizer

    result = minitron(
        "data", "prepare", "recipes/smollm2-135m/data.yaml", "--output", tmp_path / "out", "--json"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    dataset = indexed(tmp_path / "out/stdlib")
    tokenizer = load_tokenizer("smollm2-135m")
    texts = list(stdlib_documents())
    assert len(dataset) == len(texts) == manifest["sources"]["stdlib"]["documents"] > 500
    total = 0
    for i, text in enumerate(texts):  # every document, exactly
        expected = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        assert dataset[i].tolist() == expected, i
        total += len(expected)
    assert total == manifest["tokens"]
    assert manifest["dtype"] == "uint16" and manifest["bytes_per_token"] == 2


def test_hub_sources_stream_with_their_columns(tmp_path, tiny_checkpoint, monkeypatch):
    """A Hub id goes to datasets.load_dataset(..., streaming=True); rows are read in order."""
    import datasets

    calls = []

    def fake_load(path, subset=None, split=None, streaming=False):
        calls.append((path, subset, split, streaming))
        return iter([{"body": "streamed one"}, {"body": ""}, {"body": "streamed two"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = {"name": "hub", "path": "someone/corpus", "subset": "en", "split": "train",
              "text_column": "body"}  # fmt: skip
    manifest = prepare(tmp_path, tiny_checkpoint, [source])
    assert calls == [("someone/corpus", "en", "train", True)]
    assert manifest["sources"]["hub"]["documents"] == 2
    tokenizer = char_tokenizer()
    assert documents(tmp_path / "out/hub")[1] == tokenizer("streamed two")["input_ids"] + [1]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter([{"text": "x"}]))
    with pytest.raises(MinitronError, match="row 1: no column 'body'"):
        prepare(tmp_path / "again", tiny_checkpoint, [source])
