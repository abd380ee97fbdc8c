"""Classification metrics over predictions: one implementation for the run report, TensorBoard
and ``tfft.evaluate``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Predictions:
    """True labels and predicted class probabilities over a split, in the split's order."""

    labels: np.ndarray  # int64 [N] true class ids
    probabilities: np.ndarray  # float32 [N, classes]

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class ids (the most probable class)."""
        return np.argmax(self.probabilities, axis=-1).astype(np.int64)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted class."""
        return np.max(self.probabilities, axis=-1)
