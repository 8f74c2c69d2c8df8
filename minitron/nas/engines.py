"""Which serving engine can serve which nemotron-nas block kinds (``serve_with``).

From DESIGN.md's table (checked in the engines' sources; llama.cpp also run):
vLLM serves no linear attention and no linear FFN; llama.cpp's ``deci`` architecture
serves no linear FFN, no FFN no_op (computed wrongly), no attention no_op in layer 0
(the file fails to load), only Llama-3 (128,256) or Llama-2 (32,000) vocabularies,
and only ``llama3`` RoPE scaling; TensorRT-LLM serves everything. An untied output head
is served by all three: llama.cpp's ``deci`` loader reads ``output.weight`` when the
file has one and reuses the token embedding only when it does not.
"""

from __future__ import annotations

from typing import Any

from minitron.errors import MinitronError
from minitron.modeling import DeciLMConfig

ENGINES = ("vllm", "trtllm", "llamacpp")
NAMES = {"vllm": "vLLM", "trtllm": "TensorRT-LLM", "llamacpp": "llama.cpp"}
LLAMACPP_VOCABS = {128256: "Llama-3", 32000: "Llama-2"}


def check_engine(engine: str | None, config: DeciLMConfig) -> None:
    """Refuse a target config that ``engine`` cannot serve (None: no check).

    Raises:
        MinitronError: One line naming the engine, the layer (0-indexed) and the kind,
            or the model-wide setting the engine does not read.
    """
    if engine is None:
        return
    if engine not in ENGINES:
        raise MinitronError(f"serve_with must be one of {', '.join(ENGINES)} (got {engine!r})")
    name = NAMES[engine]
    for i, block in enumerate(config.block_configs):
        refused = refused_kinds(engine, i, block)
        if refused:
            raise MinitronError(
                f"serve_with {engine}: layer {i} has {refused[0]}, which {name} cannot serve"
            )
    if engine == "llamacpp":
        _check_llamacpp_model(config)


def refused_kinds(engine: str, layer: int, block: Any) -> list[str]:
    attention, ffn = block.attention, block.ffn
    refused = []
    if engine == "vllm":
        refused += ["attention replace_with_linear"] * attention.replace_with_linear
        refused += ["FFN replace_with_linear"] * ffn.replace_with_linear
    elif engine == "llamacpp":
        refused += ["attention no_op (llama.cpp fails to load it in layer 0)"] * (
            attention.no_op and layer == 0
        )
        refused += ["FFN replace_with_linear"] * ffn.replace_with_linear
        refused += ["FFN no_op"] * ffn.no_op
    return refused


def _check_llamacpp_model(config: DeciLMConfig) -> None:
    prefix = "serve_with llamacpp: llama.cpp's nemotron-nas converter"
    if config.vocab_size not in LLAMACPP_VOCABS:
        raise MinitronError(
            f"{prefix} reads only Llama-3 (128256) or Llama-2 (32000) vocabularies, "
            f"this model has {config.vocab_size}"
        )
    rope = (config.rope_parameters or {}).get("rope_type", "default")
    if rope not in ("default", "llama3"):
        raise MinitronError(f"{prefix} applies only llama3 RoPE scaling, this model has {rope}")
