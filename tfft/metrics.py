"""Classification metrics over predictions: one implementation for the run report, TensorBoard
and ``tfft.evaluate``, so the numbers in ``report.md`` and ``evaluation.json`` cannot drift
apart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tfft.errors import UserError

PixelsFn = Callable[[tf.Tensor], dict[str, tf.Tensor]]  # serve_pixels: uint8 batch -> outputs


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

    def __len__(self) -> int:
        return len(self.labels)


def predict_split(pixels: PixelsFn, ds: tf.data.Dataset, batch_size: int) -> Predictions:
    """Runs a ``serve_pixels`` computation over raw (uint8 image, label) examples.

    Images of varying sizes (photos in a folder) go one at a time, since they cannot share a
    batch; ``serve_pixels`` resizes each like serving does.
    """
    same_size = ds.element_spec[0].shape.is_fully_defined()
    labels, probabilities = [], []
    for images, y in ds.batch(batch_size if same_size else 1):
        probabilities.append(pixels(images)["probabilities"].numpy().astype(np.float32))
        labels.append(y.numpy())
    if not labels:
        raise UserError("test split: expected at least one example; received none.")
    return Predictions(np.concatenate(labels).astype(np.int64), np.concatenate(probabilities))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: ``matrix[i, j]`` = examples of true class i predicted as j."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where a class has no examples)."""
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _ratio(true_positive, matrix.sum(axis=0))
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise division that gives 0 where the denominator is 0 (no such examples)."""
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(denominator),
                     where=denominator > 0)


def classification_metrics(labels: np.ndarray, predicted: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix
    (counts), as plain JSON values: what ``evaluation.json`` holds and ``report.md`` shows.

    Macro F1 averages over the classes that have examples, so a class absent from a small test
    split does not pull it down.
    """
    matrix = confusion_matrix(labels, predicted, len(class_names))
    stats = per_class_metrics(matrix)
    per_class = {
        name: {"precision": float(stats["precision"][i]), "recall": float(stats["recall"][i]),
               "f1": float(stats["f1"][i]), "support": int(stats["support"][i])}
        for i, name in enumerate(class_names)
    }
    present = stats["support"] > 0
    examples = len(labels)
    return {
        "accuracy": float(np.trace(matrix) / max(examples, 1)),
        "examples": examples,
        "macro_f1": float(stats["f1"][present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
    }
