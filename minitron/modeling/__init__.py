"""nemotron-nas (DeciLM) config and model, registered with transformers' Auto classes.

Importing this package registers the classes; ``import minitron`` arranges for that
to happen as soon as transformers is imported (``minitron._autoregister``), after
which ``AutoConfig`` / ``AutoModelForCausalLM.from_pretrained`` read nemotron-nas
checkpoints with minitron's classes, without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from minitron.modeling.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    ffn_mult_to_intermediate_size,
    intermediate_size_to_ffn_mult,
)
from minitron.modeling.configuration import DeciLMConfig
from minitron.modeling.convert import count_parameters, llama_to_nas, nas_config_from_llama
from minitron.modeling.modeling import DeciLMForCausalLM, DeciLMModel

AutoConfig.register(DeciLMConfig.model_type, DeciLMConfig, exist_ok=True)
AutoModel.register(DeciLMConfig, DeciLMModel, exist_ok=True)
AutoModelForCausalLM.register(DeciLMConfig, DeciLMForCausalLM, exist_ok=True)

__all__ = [
    "AttentionConfig",
    "BlockConfig",
    "DeciLMConfig",
    "DeciLMForCausalLM",
    "DeciLMModel",
    "FFNConfig",
    "count_parameters",
    "ffn_mult_to_intermediate_size",
    "intermediate_size_to_ffn_mult",
    "llama_to_nas",
    "nas_config_from_llama",
]
