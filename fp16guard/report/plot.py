"""profile.png: the per-layer profile drawn with matplotlib, when it is installed."""

from __future__ import annotations

from pathlib import Path

from fp16guard.report.document import Report


def plot_profile(report: Report, path: Path) -> Path | None:
    """profile.png: relative error against depth, one line per profiled attempt; None without
    matplotlib (pip install "fp16guard[plot]")."""
    profiled = [a for a in report.attempts if a.layers]
    if not profiled:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for attempt in profiled:
        xs = [e["layer"] for e in attempt.layers]
        # Non-finite layers are drawn at the top of the axis, not dropped.
        ys = [e["relative_error"] if e["relative_error"] is not None and not e["nonfinite_tokens"] else 1.0
              for e in attempt.layers]
        axis.plot(xs, ys, marker="o", label=attempt.name)
    axis.set_yscale("log")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("block")
    axis.set_ylabel("relative error vs FP32 (1.0 = NaN/Inf)")
    axis.set_title(f"{report.model['name']}: where each policy departs from FP32")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
