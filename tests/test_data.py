"""Text sources, the stdlib corpus, packing and the held-out split."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from minitron.config import DataConfig
from minitron.corpus import module_docstrings, stdlib_documents, stdlib_files, stdlib_root
from minitron.data import batches, iter_documents, load_text_data, pack
from minitron.errors import MinitronError
from tests.conftest import char_tokenizer


def test_stdlib_corpus_is_prose_and_code_without_tests():
    files = stdlib_files()
    parts = {part for f in files for part in f.relative_to(stdlib_root()).parts}
    assert "test" not in parts and "idle_test" not in parts and "site-packages" not in parts
    assert len(files) > 300
    docs = module_docstrings(stdlib_root() / "json" / "__init__.py")
    assert any("JSON" in d for d in docs) and any(">>>" in d for d in docs)


def test_stdlib_order_is_seeded():
    first = [d[:50] for _, d in zip(range(5), stdlib_documents(seed=0), strict=False)]
    again = [d[:50] for _, d in zip(range(5), stdlib_documents(seed=0), strict=False)]
    other = [d[:50] for _, d in zip(range(5), stdlib_documents(seed=1), strict=False)]
    assert first == again and first != other


def test_pack_joins_documents_with_eos():
    tokenizer = char_tokenizer()
    tokens = pack(["ab", "cd", "efgh"], tokenizer, seq_len=4, count=2)
    eos = tokenizer.eos_token_id
    a, b, c, d = tokenizer("abcd")["input_ids"]
    assert tokens.tolist() == [[a, b, eos, c], [d, eos, *tokenizer("ef")["input_ids"]]]
    assert pack(["ab"], tokenizer, seq_len=4, count=3).shape == (0, 4)


def test_every_packed_sequence_starts_with_bos_when_the_tokenizer_adds_it():
    tokenizer = char_tokenizer(add_bos=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert tokenizer("ab")["input_ids"][0] == bos
    tokens = pack(["ab", "cd", "efgh"], tokenizer, seq_len=4, count=3)
    a, b, c, d, e, f, g = (tokenizer.convert_tokens_to_ids(x) for x in "abcdefg")
    assert tokens.tolist() == [[bos, a, b, eos], [bos, c, d, eos], [bos, e, f, g]]
    data = load_text_data(DataConfig(samples=3, heldout=2, seq_len=16), tokenizer)
    assert (data.calibration[:, 0] == bos).all() and (data.heldout[:, 0] == bos).all()
    assert (data.calibration[:, 1:] != bos).all()  # BOS only where a sequence opens
    # A tokenizer that names a BOS token but never adds it gets none.
    assert (pack(["abcdefgh"], char_tokenizer(), seq_len=4, count=2)[:, 0] != bos).all()


def test_calibration_and_heldout_are_disjoint_and_sized():
    data = load_text_data(DataConfig(samples=5, heldout=3, seq_len=32), char_tokenizer())
    assert data.calibration.shape == (5, 32) and data.heldout.shape == (3, 32)
    assert data.info["calibration_tokens"] == 160
    everything = pack(stdlib_documents(0), char_tokenizer(), 32, 8)
    assert torch.equal(torch.cat([data.calibration, data.heldout]), everything)
    assert [b.shape[0] for b in batches(data.calibration, 2)] == [2, 2, 1]


def test_local_text_sources(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    lines = [{"body": "from jsonl"}, {"body": None}, {"body": ""}]
    (tmp_path / "b.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
    (tmp_path / "folder.txt").mkdir()  # a folder with a data-like name is not a file
    pq.write_table(pa.table({"body": ["from parquet", None]}), tmp_path / "c.parquet")
    docs = list(iter_documents(DataConfig(source=str(tmp_path), text_column="body")))
    assert docs == ["hello world", "from jsonl", "from parquet"]
    assert list(iter_documents(DataConfig(source=str(tmp_path / "a.txt")))) == ["hello world"]


@pytest.mark.parametrize(
    ("setup", "source", "message"),
    [
        (None, "./missing.txt", "data not found"),
        (None, "missing.jsonl", "data not found"),
        ('{"text": 1}\nnot json\n', "bad.jsonl", "bad.jsonl:2: not valid JSON"),
        ('{"body": "x"}\n', "bad.jsonl", "no 'text' key"),
    ],
)
def test_bad_local_sources(tmp_path, monkeypatch, setup, source, message):
    monkeypatch.chdir(tmp_path)
    if setup:
        (tmp_path / source).write_text(setup)
    with pytest.raises(MinitronError, match=message):
        list(iter_documents(DataConfig(source=source)))


def test_too_little_text_is_an_error(tmp_path):
    (tmp_path / "small.txt").write_text("tiny")
    config = DataConfig(source=str(tmp_path / "small.txt"), samples=2, heldout=1, seq_len=8)
    with pytest.raises(MinitronError, match="gave 0 sequences of 8 tokens, need 3"):
        load_text_data(config, char_tokenizer())


def test_unreachable_hub_dataset_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        MinitronError, match="could not load dataset 'nobody/no-such-dataset'"
    ) as err:
        list(iter_documents(DataConfig(source="nobody/no-such-dataset")))
    assert "\n" not in str(err.value)


def test_corrupt_parquet_is_one_line(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(MinitronError, match="not a readable parquet file"):
        list(iter_documents(DataConfig(source=str(tmp_path / "bad.parquet"))))
