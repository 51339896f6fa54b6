"""Progress callbacks: how the library reports progress without printing (no heavy imports)."""

from __future__ import annotations


class Progress:
    """Callbacks through which the library reports progress; the CLI renders them.

    Every method is a no-op here, so library users may pass nothing.
    """

    def stage(self, message: str) -> None:
        """A step starts (loading weights, building a model)."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the run."""

    def pass_started(self, label: str, total_tokens: int) -> None:
        """An embedding pass over ``total_tokens`` tokens starts."""

    def advance(self, tokens: int) -> None:
        """``tokens`` more tokens of the current pass are done."""

    def pass_finished(self) -> None:
        """The current pass is done."""
