"""The items of ``minitron_series``: continue a short series, 4 choices, generated.

Eight kinds of series (counting up and down by a step, doubling, weekdays,
months, letters, number words, ordinals), each item a context such as
``"12, 15, 18, 21,"`` and four candidate next terms, one right. The items are
made by this module from a fixed seed, so there are enough of them (300) for
the demo's differences to exceed their standard error, and the committed
``tasks/series.jsonl`` is exactly what ``write_items`` produces (a test checks).

Regenerate with ``python -m minitron.eval.series``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

SEED = 20261202
COUNT = 300
PATH = Path(__file__).with_name("tasks") / "series.jsonl"

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
NUMBER_WORDS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
ORDINALS = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def _counting(rng: random.Random, sign: int) -> tuple[list[str], str, list[str]]:
    step = rng.randint(2, 9)
    length = rng.randint(4, 6)
    if sign > 0:
        start = rng.randint(1, 60)
    else:
        start = rng.randint(step * (length + 2), step * (length + 2) + 60)
    terms = [start + sign * step * i for i in range(length + 1)]
    answer = terms[-1]
    wrong = {answer + sign * step, answer + sign, answer - sign * step + sign, terms[-2] + 1}
    wrong.discard(answer)
    return [str(t) for t in terms[:-1]], str(answer), [str(w) for w in sorted(wrong)]


def _doubling(rng: random.Random) -> tuple[list[str], str, list[str]]:
    start = rng.randint(1, 12)
    length = rng.randint(4, 5)
    terms = [start * 2**i for i in range(length + 1)]
    answer = terms[-1]
    wrong = {answer + terms[-2] // 2, answer * 2, terms[-2] + terms[-3], answer - start}
    wrong.discard(answer)
    return [str(t) for t in terms[:-1]], str(answer), [str(w) for w in sorted(wrong)]


def _cyclic(names: Sequence[str], wrap: bool) -> Callable[[random.Random], tuple]:
    """Every name or every other one, wrapping round (weekdays) or not (letters)."""

    def make(rng: random.Random) -> tuple[list[str], str, list[str]]:
        step = rng.choice((1, 1, 2))
        length = rng.randint(3, 5)
        last = len(names) - 1 - step * length
        start = rng.randint(0, len(names) - 1 if wrap else last)
        terms = [names[(start + step * i) % len(names)] for i in range(length + 1)]
        return terms[:-1], terms[-1], [n for n in names if n != terms[-1]]

    return make


KINDS: dict[str, Callable[[random.Random], tuple[list[str], str, list[str]]]] = {
    "count_up": lambda rng: _counting(rng, +1),
    "count_down": lambda rng: _counting(rng, -1),
    "doubling": _doubling,
    "weekdays": _cyclic(WEEKDAYS, wrap=True),
    "months": _cyclic(MONTHS, wrap=True),
    "letters": _cyclic(LETTERS, wrap=False),
    "number_words": _cyclic(NUMBER_WORDS, wrap=False),
    "ordinals": _cyclic(ORDINALS, wrap=False),
}


def make_items(seed: int = SEED, count: int = COUNT) -> list[dict]:
    """``count`` distinct items, the kinds in turn: ``{kind, context, choices, label}``.

    A kind whose few possible series are all used (weekdays) gives its turn to
    the next, so the numeric kinds fill the rest.
    """
    rng = random.Random(seed)
    items, seen = [], set()
    kinds = list(KINDS)
    turn = 0
    while len(items) < count:
        kind = kinds[turn % len(kinds)]
        turn += 1
        for _ in range(100):
            terms, answer, wrong = KINDS[kind](rng)
            context = ", ".join(terms) + ","
            if context not in seen:
                break
        else:
            continue
        seen.add(context)
        choices = [answer, *rng.sample(sorted(wrong), 3)]
        rng.shuffle(choices)
        items.append(
            {"kind": kind, "context": context, "choices": choices, "label": choices.index(answer)}
        )
    return items


def write_items(path: Path = PATH) -> None:
    with path.open("w") as out:
        for item in make_items():
            out.write(json.dumps(item) + "\n")


if __name__ == "__main__":
    write_items()
    print(f"wrote {COUNT} items to {PATH}")
