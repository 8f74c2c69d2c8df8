"""Model specs and atomic output folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minitron.errors import MinitronError
from minitron.io import (
    atomic_output_dir,
    cache_root,
    check_output_dir,
    load_config,
    load_model,
    resolve_device,
    resolve_model,
)
from tests.conftest import SESSION_CACHE


def test_resolve_model_kinds(tmp_path, tiny_checkpoint):
    assert resolve_model("smollm2-135m").kind == "embedded"
    assert resolve_model(str(tiny_checkpoint)).kind == "local"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)).kind == "gguf"
    assert resolve_model("meta-llama/Llama-3.1-8B").kind == "hub"


@pytest.mark.parametrize("spec", ["./nope", "/no/such/dir", "nope.gguf", "a/b/c", ""])
def test_missing_paths_are_errors(spec):
    with pytest.raises(MinitronError, match="model not found"):
        resolve_model(spec)


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(MinitronError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unreachable_hub_model_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MinitronError, match="could not load model 'nobody/no-such-model'") as err:
        load_config("nobody/no-such-model")
    assert "\n" not in str(err.value)


def test_load_local_checkpoint(tiny_checkpoint):
    model, tokenizer = load_model(str(tiny_checkpoint))
    assert not model.training
    assert model.config.num_hidden_layers == 6 and tokenizer.eos_token_id == 1


def test_bf16_load_keeps_rotary_frequencies_in_fp32_like_transformers(tiny_checkpoint):
    """load_model in bf16 computes what transformers' own bf16 load computes: the cast
    to the model's dtype leaves the rotary frequencies in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model, _ = load_model(str(tiny_checkpoint), "bfloat16", "cpu")
    reference = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    buffers = dict(model.named_buffers())
    assert buffers["model.rotary_emb.inv_freq"].dtype == torch.float32
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = torch.arange(3, 200).remainder(model.config.vocab_size)[None]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference.eval()(ids).logits)


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINITRON_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("MINITRON_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "minitron"


def test_atomic_output_dir_success_and_overwrite(tmp_path):
    target = tmp_path / "runs" / "out"
    with atomic_output_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(MinitronError, match="output folder exists"):
        check_output_dir(target, overwrite=False)
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]  # no temporaries left


def test_atomic_output_dir_failure_leaves_nothing(tmp_path):
    target = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(target) as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(MinitronError, match="not a folder"):
        check_output_dir(tmp_path / "f", overwrite=True)


def test_output_may_not_be_or_hold_the_working_folder(tmp_path, monkeypatch):
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    for path in (".", "..", str(work)):
        with pytest.raises(MinitronError, match="working folder"):
            check_output_dir(path, overwrite=True)


def test_failed_final_rename_is_one_line_and_cleans_up(tmp_path, monkeypatch):
    import pathlib

    real_rename = pathlib.Path.rename

    def rename(self, target):
        if ".tmp-" in self.name:
            raise OSError(16, "Device or resource busy")
        return real_rename(self, target)

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous result")
    monkeypatch.setattr(pathlib.Path, "rename", rename)
    expected = pytest.raises(MinitronError, match="could not move the result into")
    with expected, atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (target / "old.txt").read_text() == "previous result"


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    stale = tmp_path / ".out.tmp-999999999"
    stale.mkdir()
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("device", ["foo", "cuda:x", "tpu"])
def test_bad_device(device):
    with pytest.raises(MinitronError, match="device"):
        resolve_device(device)


def test_corrupt_gguf_is_one_line(tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(MinitronError, match="could not") as err:
        load_model(str(gguf))
    assert "\n" not in str(err.value)


def test_the_test_session_has_its_own_cache():
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minitron"
    assert cache_root() == Path(SESSION_CACHE)
    assert cache_root().resolve() != user_cache.resolve()
    assert user_cache.resolve() not in cache_root().resolve().parents
