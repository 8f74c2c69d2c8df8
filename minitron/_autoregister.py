"""Register nemotron-nas with transformers' Auto classes as soon as transformers loads.

``import minitron`` must make ``AutoModelForCausalLM.from_pretrained`` read
nemotron-nas checkpoints, but importing torch and transformers costs seconds that
``minitron --help`` and the CLI's one-line errors should not pay. So: if transformers
is already imported, ``minitron.modeling`` (which registers) is imported now;
otherwise a one-shot import hook imports it right after ``transformers`` itself has
loaded, before the importer gets it back.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def _register() -> None:
    import minitron.modeling  # noqa: F401  (registers on import)


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds ``transformers`` with the normal machinery and runs ``_register`` after it."""

    def find_spec(self, name, path, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders do the finding
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def register_with_transformers() -> None:
    """Make sure nemotron-nas is registered once transformers is (or is already) loaded."""
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
