"""Typed configs: frozen dataclasses filled from YAML recipes, checked strictly.

A recipe is a YAML mapping whose keys mirror a config dataclass. Loading it
checks every key and type: an unknown key, a wrong type or a bad choice is a
``MinitronError`` naming the key, never a silent default. ``--set a.b=v``
overrides are applied to the raw mapping first, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from minitron.errors import MinitronError

T = TypeVar("T")

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = str  # "auto", "cpu", "cuda", "cuda:1", ...


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where calibration and held-out text come from, and how much of it.

    Attributes:
        source: ``stdlib`` (the embedded corpus of Python standard-library
            docstrings), a local ``.txt``/``.jsonl``/``.parquet`` file or a folder of
            them, or a Hugging Face Hub dataset id.
        subset: Hub dataset configuration name (e.g. ``wikitext-2-raw-v1``).
        split: Hub dataset split.
        text_column: Column (or JSON key) holding the text.
        streaming: Stream a Hub dataset instead of downloading it whole.
        samples: Calibration sequences.
        heldout: Held-out sequences, used only to report perplexity.
        seq_len: Tokens per packed sequence.
        batch_size: Sequences per forward pass.
        seed: Seed for the order ``stdlib`` modules are read in.
    """

    source: str = "stdlib"
    subset: str | None = None
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False
    samples: int = 32
    heldout: int = 16
    seq_len: int = 256
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "batch_size"):
            if getattr(self, name) < 1:
                raise MinitronError(f"data.{name} must be at least 1 (got {getattr(self, name)})")
        if self.seq_len < 2:
            raise MinitronError(f"data.seq_len must be at least 2 (got {self.seq_len})")
        if self.heldout < 0:
            raise MinitronError(f"data.heldout must be 0 or more (got {self.heldout})")


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """``data.prepared`` of a distill recipe: one prepared dataset and its weight.

    Attributes:
        path: The prefix of a ``.bin`` / ``.idx`` pair (``runs/data/web/fineweb``),
            written by ``minitron data prepare``, NeMo or Megatron-LM.
        weight: Its share of the training sequences (weights are normalised).
    """

    path: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise MinitronError(f"data.prepared: weight of {self.path} must be above 0")


@dataclasses.dataclass(frozen=True)
class DistillDataConfig(DataConfig):
    """``data`` of ``minitron distill``: text packed in memory, or prepared datasets.

    Attributes:
        prepared: Prepared datasets and their weights, read as a blend through
            megatron-core (``source``, ``subset``, ``split``, ``text_column``,
            ``streaming`` and ``samples`` are then not used).
        max_epochs: Refuse a run that reads any prepared dataset more often than this.
        index_cache: Where megatron-core's index caches go (default: the run's work
            folder); storage every node sees.
    """

    prepared: list[PreparedData] | None = None
    max_epochs: float = 1.0
    index_cache: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prepared is not None and not self.prepared:
            raise MinitronError("data.prepared: give at least one prepared dataset")
        if not self.max_epochs > 0:
            raise MinitronError(f"data.max_epochs must be above 0 (got {self.max_epochs})")


def parse_config(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types.

    Args:
        cls: A dataclass type whose fields may be scalars, ``X | None``,
            ``Literal[...]``, ``list[X]`` or nested dataclasses.
        data: The mapping (usually parsed YAML).
        where: Prefix for error messages, e.g. the recipe path.

    Returns:
        A new ``cls`` instance.

    Raises:
        MinitronError: On an unknown or missing key, a wrong type, or a value
            the class's own ``__post_init__`` rejects.
    """
    label = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise MinitronError(f"{label}expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise MinitronError(f"{label}unknown key '{key}' (known keys: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], f"{label}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise MinitronError(f"{label}missing required key '{name}'")
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``hint``; return it (nested dataclasses built)."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except MinitronError as err:
                errors.append(str(err))
        raise MinitronError(errors[0] if len(errors) == 1 else f"{key}: bad value {value!r}")
    if origin is Literal:
        return pick_choice(key, value, get_args(hint))
    if origin is list:
        if not isinstance(value, list):
            raise MinitronError(f"{key} must be a list (got {value!r})")
        (item,) = get_args(hint)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return parse_config(hint, value if value is not None else {}, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _is_float_text(value):
        return float(value)  # YAML 1.1 reads 4.5e9 (no dot before e, no sign) as text
    if hint in (int, float) and isinstance(value, bool):
        raise MinitronError(f"{key} must be {hint.__name__} (got {value!r})")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise MinitronError(f"{key} must be {hint.__name__} (got {value!r})")
    return value


def _is_float_text(text: str) -> bool:
    """True for a plain decimal number such as ``4.5e9`` (not ``nan`` or ``inf``)."""
    try:
        return math.isfinite(float(text)) and any(c.isdigit() for c in text)
    except ValueError:
        return False


def pick_choice(key: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a one-line error that names them.

    YAML reads ``32`` as an int and ``1.0`` as a float: a number whose text is one
    of the (string) choices is taken as that string, so ``--set precision=32``
    means ``"32"``. When the value's type is the problem the error says so.
    """
    if any(value == c and type(value) is type(c) for c in choices):
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and str(value) in choices:
        return str(value)
    raise choice_error(key, value, choices)


def choice_error(key: str, value: Any, choices: Sequence[Any]) -> MinitronError:
    """``key must be one of a, b (got 'x')``, with the value's type where it differs."""
    got = repr(value)
    kinds = {type(c) for c in choices}
    if type(value) not in kinds:
        wanted = " or ".join(sorted(_TYPE_WORDS.get(k, k.__name__) for k in kinds))
        got += f", {_TYPE_WORDS.get(type(value), 'a ' + type(value).__name__)} where {wanted}"
        got += " is expected"
    return MinitronError(f"{key} must be one of {', '.join(map(str, choices))} (got {got})")


_TYPE_WORDS = {
    str: "a string", int: "an integer", float: "a number", bool: "a boolean",
    list: "a list", dict: "a mapping", type(None): "null",
}  # fmt: skip


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b=value`` overrides applied.

    Values are parsed as YAML, so ``16`` is an int, ``[1, 2]`` a list and
    ``null`` is None. Unknown keys are left for ``parse_config`` to reject.
    """
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MinitronError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        *parents, leaf = key.strip().split(".")
        node = result
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MinitronError(f"recipe not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506
    except UnicodeDecodeError:
        raise MinitronError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or ""
        if "given twice" in problem:
            raise MinitronError(f"{path}: {problem}{at}") from None
        raise MinitronError(f"{path}: not valid YAML{at} ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MinitronError(f"{path}: a recipe must be a mapping of keys")
    return data


def load_recipe(path: str | Path, cls: type[T], overrides: Sequence[str] = ()) -> T:
    """Read a recipe YAML into config ``cls``, applying ``--set`` overrides."""
    return parse_config(cls, apply_overrides(read_yaml(path), overrides), str(path))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)
