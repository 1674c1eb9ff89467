"""The values a setting accepts, said the same way everywhere: config keys (:mod:`dsmpnn.train.config`) and
command-line options (:mod:`dsmpnn.cli`) both check a :class:`Rule` and print its :meth:`Rule.describe`.

Light on purpose (no torch, no numpy): the CLI builds its parser from it at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dsmpnn.errors import ConfigError
from dsmpnn.messages import brief

__all__ = ["Rule", "SEED_MAX"]

SEED_MAX = 2**32 - 1
"""Largest seed of configs and options (NumPy's legacy range; every generator here accepts it)."""


@dataclass(frozen=True)
class Rule:
    """The values a config key accepts (besides null where its type allows it), and the words that say so.

    ``kind``: "int" (``lo <= v <= hi``), "float" (finite, ``lo <= v`` or ``lo < v`` with ``lo_open``, and
    ``v <= hi`` unless ``hi`` is None), "choice" (one of ``choices``) or "list" (``lo`` to ``hi`` items, each
    checked by ``item``).
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    item: Rule | None = None

    def describe(self) -> str:
        """"an integer in [1, 1000]", "a finite number > 0", "one of ['mean', 'sum']"..."""
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind == "int":
            return f"an integer in [{self.lo}, {self.hi}]"
        if self.kind == "list":
            return f"a list of {self.lo} to {self.hi} items, each {self.item.describe()}"
        low = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"a finite number {low}" if self.hi is None else f"a number {low} and <= {self.hi:g}"

    def accepts(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if self.kind == "list":
            return (isinstance(value, list) and self.lo <= len(value) <= self.hi
                    and all(self.item.accepts(v) for v in value))
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
            return False
        if self.kind == "float" and not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        return above and (self.hi is None or value <= self.hi)

    def check(self, key: str, value: Any, nullable: bool) -> None:
        """Raise ConfigError ``KEY is VALUE, expected ...`` unless the value is accepted."""
        if (value is None and nullable) or self.accepts(value):
            return
        raise ConfigError(f"{key} is {brief(value)}, expected {self.describe()}{' or null' if nullable else ''}")
