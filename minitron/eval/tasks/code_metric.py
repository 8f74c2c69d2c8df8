"""The code task's metric: pass@1 scored in minitron's sandbox (see minitron.eval.code)."""

from minitron.eval.code import pass_at_1

__all__ = ["pass_at_1"]
