"""format_cosine: the one display rule; a cosine below a threshold never prints at or above it."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fp16guard.core.formatting import format_cosine

NAN = math.nan


@pytest.mark.parametrize(
    "value, shown",
    [
        (None, "NaN"),
        (NAN, "NaN"),
        (1.0, "1"),
        (0.99999994, "1-6.0e-08"),
        (0.99999985, "1-1.5e-07"),
        (0.9999999, "1-1.0e-07"),
        (0.99999989, "1-1.1e-07"),  # the gap rounds up, the cosine down
        (0.98999996, "0.989999"),  # six decimals round down: not 0.990000
        (0.95, "0.950000"),
        (0.999, "0.999000"),
        (-0.25, "-0.250000"),
    ],
)
def test_format_cosine_known_answers(value, shown):
    assert format_cosine(value) == shown


def _shown_value(text: str) -> Decimal:
    return 1 - Decimal(text[2:]) if text.startswith("1-") else Decimal(text)


cosines = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


@given(cosines, cosines)
def test_format_cosine_never_shows_a_failing_value_at_or_above_the_threshold(value, threshold):
    shown = _shown_value(format_cosine(value))
    assert shown <= Decimal(repr(value))  # never rounded up
    if value < threshold:
        assert shown < Decimal(repr(threshold))  # as the threshold is printed: --min-cosine 0.9999999


@given(st.floats(min_value=0.999, max_value=1.0))
def test_format_cosine_near_one_is_as_short_as_a_table_cell(value):
    assert len(format_cosine(value)) <= 9
