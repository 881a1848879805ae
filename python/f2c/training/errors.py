"""The errors a training run raises for reasons the user can act on."""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "TrainingError"]


class TrainingError(RuntimeError):
    """A run cannot start or continue for a reason the user can fix (data, sizes, config)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the run stops before the optimiser step."""

    def __init__(self, message: str, value: float) -> None:
        super().__init__(message)
        self.value = value
