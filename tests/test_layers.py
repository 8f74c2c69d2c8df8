"""Tracing and replaying decoder layers: every argument a layer got is replayed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast

from minitron.errors import MinitronError
from minitron.eval.perplexity import perplexity
from minitron.importance import compute_importance
from minitron.layers import run_layers, trace
from tests.conftest import random_batches, tiny_llama


def document_mask(seq_len: int, boundary: int) -> torch.Tensor:
    """``[1, 1, T, T]`` bool: causal attention that does not cross ``boundary``."""
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    doc = torch.arange(seq_len) >= boundary
    return (causal & (doc[:, None] == doc[None, :]))[None, None]


def call_layers_positionally(model: nn.Module, mask: torch.Tensor) -> None:
    """Make the decoder pass mask, positions and rotary embeddings positionally."""
    inner = model.model

    def forward(input_ids, use_cache=False, **_):
        hidden = inner.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1])[None]
        rotary = inner.rotary_emb(hidden, position_ids=positions)
        for layer in inner.layers:
            hidden = layer(hidden, mask, positions, None, False, rotary)
        return BaseModelOutputWithPast(last_hidden_state=inner.norm(hidden))

    inner.forward = forward


def test_replay_keeps_a_mask_passed_positionally():
    model = tiny_llama()
    (ids,) = random_batches(count=1, batch=2, seq_len=12)
    mask = document_mask(12, boundary=5)
    call_layers_positionally(model, mask)
    traced = trace(model, ids)
    assert traced.layer_kwargs[0]["attention_mask"] is mask
    replayed = run_layers(model, traced.hidden[0], traced.layer_kwargs, range(6))
    torch.testing.assert_close(replayed, traced.hidden[6], rtol=0, atol=1e-6)
    # The mask matters: replaying with a plain causal mask gives something else.
    plain = [kw | {"attention_mask": None} for kw in traced.layer_kwargs]
    assert not torch.allclose(run_layers(model, traced.hidden[0], plain, range(6)), replayed)


class Starred(nn.Module):
    def forward(self, hidden, *extra):
        return hidden


def test_unnamed_positional_arguments_are_refused():
    model = tiny_llama(num_layers=2)
    model.model.layers[0] = Starred()
    inner = model.model

    def forward(input_ids, use_cache=False, **_):
        hidden = inner.embed_tokens(input_ids)
        for layer in inner.layers:
            hidden = layer(hidden, "something")
        return BaseModelOutputWithPast(last_hidden_state=hidden)

    inner.forward = forward
    with pytest.raises(MinitronError, match="unnamed positional arguments"):
        trace(model, random_batches(count=1)[0])


def tiny(cls_name: str, **extra):
    import transformers

    config = getattr(transformers, f"{cls_name}Config")(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return getattr(transformers, f"{cls_name}ForCausalLM")(config).eval()


@pytest.mark.parametrize(
    ("cls_name", "extra", "field"),
    [
        ("Gemma2", {"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
        ("Granite", {"logits_scaling": 4.0}, "logits_scaling"),
        ("Cohere", {"logit_scale": 0.0625}, "logit_scale"),
    ],
)
def test_models_that_transform_logits_are_refused(cls_name, extra, field):
    model = tiny(cls_name, **extra)
    ids = torch.randint(0, 64, (2, 10))
    with pytest.raises(MinitronError, match=field):
        perplexity(model, [ids])
    with pytest.raises(MinitronError, match=field):
        compute_importance(model, [ids], "loss")


def test_a_logit_transform_hidden_in_forward_is_caught():
    model = tiny_llama()
    forward = model.forward

    def doubled(*args, **kwargs):
        output = forward(*args, **kwargs)
        output.logits = output.logits * 2
        return output

    model.forward = doubled
    with pytest.raises(MinitronError, match="not lm_head"):
        perplexity(model, random_batches(count=1))


def test_untransformed_logits_give_the_models_own_perplexity():
    model = tiny("Gemma2", final_logit_softcapping=None)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert perplexity(model, [ids]) == pytest.approx(math.exp(loss), rel=1e-5)
