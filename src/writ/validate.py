"""Checks of input values shared by the engine and the safety rules (each raises Invalid)."""

from __future__ import annotations

from typing import Any

from .errors import Invalid

MAX_TEXT = 2000


def number(value: Any, field: str, lo: float, hi: float) -> float:
    """``value`` as a float within ``[lo, hi]``; numeric strings are accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise Invalid(
                f"{field} must be a number between {lo:g} and {hi:g}", field=field
            ) from None
    if value != value or not lo <= value <= hi:
        raise Invalid(f"{field} must be between {lo:g} and {hi:g}, not {value}", field=field)
    return float(value)


def text(value: Any, field: str, required: bool = True, limit: int = MAX_TEXT) -> str | None:
    """``value`` stripped: a non-empty string of at most ``limit`` characters."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{field} is required: a few plain words", field=field)
    if len(value) > limit:
        raise Invalid(f"{field} is at most {limit} characters", field=field)
    return value.strip()
