"""How figures are shown to a person: one rule for every writer (terminal, report.md, JUnit,
reasons). Pure Python, no torch, so the CLI's light commands can import it."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

#: Closer to 1 than this, a cosine is shown as its gap to 1 ("1-2.3e-08"): six decimals would
#: show 0.99999994 as 1.000000.
GAP_BELOW = 1e-3


def format_cosine(value: float | None) -> str:
    """A cosine for display, never rounded up: "NaN" for NaN/missing; "1" for exactly 1; within
    ``GAP_BELOW`` of 1, the gap to 1 with two significant digits rounded up ("1-2.3e-08");
    otherwise six decimals rounded down. So a cosine below a threshold never prints at or above
    it (as Python prints the threshold). Every writer uses this one rule."""
    if value is None or not math.isfinite(value):
        return "NaN"
    # The shortest decimal that reads back as ``value``: lies between the floats either side, so
    # rounding it down keeps the order of any two floats.
    exact = Decimal(repr(float(value)))
    if exact == 1:
        return "1"
    gap = 1 - exact
    if 0 < gap < Decimal(repr(GAP_BELOW)):
        step = Decimal(1).scaleb(gap.adjusted() - 1)  # two significant digits
        return f"1-{float(gap.quantize(step, rounding=ROUND_CEILING)):.1e}"
    return f"{exact.quantize(Decimal('1e-6'), rounding=ROUND_FLOOR):.6f}"
