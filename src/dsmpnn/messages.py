"""Values in error messages: a bounded repr, cut while it is built (a 100 MB list or a 10,000-digit integer from a
hostile config must not be formatted in full to show its first 60 characters)."""

from __future__ import annotations

from typing import Any

__all__ = ["brief"]

_MAX_DEPTH = 6


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (``...`` marks the cut), built in O(limit) time."""
    text = _bounded(value, limit + 1, 0)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _bounded(value: Any, budget: int, depth: int) -> str:
    """A repr of ``value`` that stops growing soon after ``budget`` characters."""
    if isinstance(value, (str, bytes)):
        return repr(value[:budget])
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
    if isinstance(value, (list, tuple, dict)):
        if depth >= _MAX_DEPTH:
            return "..."
        return _bounded_container(value, budget, depth)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"<{type(value).__name__}>"


def _bounded_container(value: list | tuple | dict, budget: int, depth: int) -> str:
    open_, close = {list: "[]", tuple: "()", dict: "{}"}.get(type(value), "[]")
    items = value.items() if isinstance(value, dict) else value
    parts: list[str] = []
    used = 2
    for item in items:
        if used > budget:
            parts.append("...")
            break
        if isinstance(value, dict):
            key, val = item
            key_text = _bounded(key, budget - used, depth + 1)
            text = f"{key_text}: {_bounded(val, budget - used - len(key_text), depth + 1)}"
        else:
            text = _bounded(item, budget - used, depth + 1)
        parts.append(text)
        used += len(text) + 2
    return open_ + ", ".join(parts) + close
