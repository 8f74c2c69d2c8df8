"""Evaluation: lm-eval tasks on models in memory, presets, sandboxed code scoring, perplexity."""

from minitron.eval.harness import TaskSet, evaluate_tasks

__all__ = ["TaskSet", "evaluate_tasks"]
