"""minitron_series: the committed items are the generator's, and each has one right answer."""

from __future__ import annotations

import calendar
import json
import string

from minitron.eval import series

ITEMS = [json.loads(line) for line in series.PATH.read_text().splitlines()]

# Independent of series.py's tables: the names come from the stdlib or are spelled here.
NAMED = {
    "weekdays": (list(calendar.day_name), True),
    "months": (list(calendar.month_name)[1:], True),
    "letters": (list(string.ascii_lowercase), False),
    "number_words": (
        [
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
        ],
        False,
    ),
    "ordinals": (
        [
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
        ],
        False,
    ),
}


def continues(kind: str, terms: list[str], candidate: str) -> bool:
    """Whether ``candidate`` is the next term of ``terms``, worked out from the terms alone."""
    if kind in NAMED:
        names, wraps = NAMED[kind]
        if candidate not in names:
            return False
        index = [names.index(t) for t in terms + [candidate]]
        steps = {
            (b - a) % len(names) if wraps else b - a for a, b in zip(index, index[1:], strict=False)
        }
        return len(steps) == 1 and steps.pop() > 0
    numbers = [int(t) for t in terms + [candidate]]
    if kind == "doubling":
        return all(b == 2 * a for a, b in zip(numbers, numbers[1:], strict=False))
    steps = {b - a for a, b in zip(numbers, numbers[1:], strict=False)}
    return len(steps) == 1 and (steps.pop() > 0) == (kind == "count_up")


def test_committed_items_are_what_the_generator_makes():
    assert series.make_items() == ITEMS
    assert len(ITEMS) == series.COUNT == 300


def test_exactly_one_choice_continues_each_series():
    wrong = []
    for item in ITEMS:
        terms = item["context"].rstrip(",").split(", ")
        right = [c for c in item["choices"] if continues(item["kind"], terms, c)]
        if right != [item["choices"][item["label"]]] or len(set(item["choices"])) != 4:
            wrong.append(item)
        assert len(terms) >= 3
    assert wrong == []


def test_items_are_distinct_and_cover_every_kind_and_label():
    assert len({item["context"] for item in ITEMS}) == len(ITEMS)
    assert {item["kind"] for item in ITEMS} == set(NAMED) | {"count_up", "count_down", "doubling"}
    assert {item["label"] for item in ITEMS} == {0, 1, 2, 3}
