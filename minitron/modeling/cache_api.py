"""The KV cache's keyword name, which transformers renamed inside the 5.x range we support.

Up to 5.23 a model received its cache as ``past_key_values=`` and returned it in
``output.past_key_values``; from 5.24 ``generate`` passes ``cache=``, model outputs
have a ``cache`` field and ``create_causal_mask`` / ``LlamaAttention`` take ``cache``
(the old name is deprecated). A model that reads only one name silently runs
without its cache under the other version, so minitron's nemotron-nas model accepts
both and calls transformers with the name the installed release uses.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

#: The keyword transformers' own functions take the cache as (``cache`` from 5.24).
CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
)
#: The field model outputs hold the cache in.
OUTPUT_FIELD = (
    "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def pick_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The one cache a forward was given, under either name.

    Raises:
        ValueError: If both names were given (transformers raises the same).
    """
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache as cache= or past_key_values=, not both")
    return cache if cache is not None else past_key_values


def cache_kwargs(cache: Cache | None) -> dict[str, Cache | None]:
    """``{name: cache}`` for calling transformers' functions of the installed release."""
    return {CACHE_KWARG: cache}


def output_cache(output: Any) -> Cache | None:
    """The cache a model returned, from an output of the installed release."""
    return output.get(OUTPUT_FIELD)
