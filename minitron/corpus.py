"""The embedded default corpus: docstrings of the installed Python standard library.

English prose mixed with code (doctest examples, signatures), available offline on
every machine that runs minitron. Modules are read in a seeded shuffled order so
a small sample still spans many topics; test folders and third-party packages
are skipped.
"""

from __future__ import annotations

import ast
import random
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None, seed: int = 0) -> list[Path]:
    """Standard-library ``.py`` files outside test folders, in a seeded order."""
    root = root or stdlib_root()
    files = sorted(
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts)
    )
    random.Random(seed).shuffle(files)
    return files


def module_docstrings(path: Path) -> list[str]:
    """Every module, class and function docstring of one source file, in order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old invalid escapes in some stdlib files
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    docs = (ast.get_docstring(n, clean=True) for n in nodes)
    return [d for d in docs if d and len(d) >= 40]


def stdlib_documents(seed: int = 0) -> Iterator[str]:
    """Yield one document per stdlib module: its docstrings joined by blank lines."""
    for path in stdlib_files(seed=seed):
        docs = module_docstrings(path)
        if docs:
            yield "\n\n".join(docs)
