"""Shared test helpers: tiny random Llamas for logic, the embedded model for integration."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# The test session's own minitron cache (the embedded model's safetensors copy):
# never the user's. MINITRON_TEST_CACHE names a folder to reuse across sessions.
if os.environ.get("MINITRON_TEST_CACHE"):
    os.environ["MINITRON_CACHE"] = os.environ["MINITRON_TEST_CACHE"]
else:
    os.environ["MINITRON_CACHE"] = tempfile.mkdtemp(prefix="minitron-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MINITRON_CACHE"], ignore_errors=True)
SESSION_CACHE = os.environ["MINITRON_CACHE"]

# Before transformers / huggingface_hub are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

VOCAB = 98  # char_tokenizer: 3 specials + printable ASCII


def tiny_config(num_layers: int = 6, **overrides) -> LlamaConfig:
    """A 6-layer Llama small enough to run hundreds of times a second."""
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        # Large init so every layer changes the residual stream noticeably;
        # with the default 0.02 all layers are near-identities and scores tie.
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(num_layers: int = 6, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(num_layers, **overrides)).eval()


def char_tokenizer(add_bos: bool = False):
    """A character-level tokenizer over printable ASCII, built offline.

    With ``add_bos`` it starts every text with ``<s>``, as Llama tokenizers do.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2} | {
        chr(c): i + 3 for i, c in enumerate(range(32, 127))
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_checkpoint(path, num_layers: int = 6, seed: int = 0, dtype=torch.float32):
    """Write a tiny random Llama and its tokenizer as a standard HF folder."""
    tiny_llama(num_layers, seed).to(dtype).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def random_batches(count: int = 2, batch: int = 3, seq_len: int = 12, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq_len), generator=generator) for _ in range(count)]


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def batches():
    return random_batches()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return save_tiny_checkpoint(tmp_path / "tiny-parent")
