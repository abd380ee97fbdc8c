"""Examples per class and split, as the run summary, report.md and a warning show them.

The counts come with the splits (``tfft.data.Splits.counts``, from the labels each source knew),
so showing them costs no pass over the data. A skewed training split is worth a line before the
run: its accuracy can look fine while the small classes are never predicted.
"""

from __future__ import annotations

from collections.abc import Sequence

IMBALANCE_RATIO = 5.0  # largest / smallest training class that earns a warning
LISTED = 8  # classes a summary line names in full; beyond it, the extremes only
EXTREMES = 3

Counts = dict[str, tuple[int, ...]]  # split -> examples per class id


def balanced_weights(per_class: Sequence[int]) -> tuple[float, ...]:
    """``--class_weight=balanced``: ``N / (C * n_c)`` per class (scikit-learn's "balanced"),
    so every class adds the same total weight to an epoch's loss and the mean weight of an
    example stays 1. A class with no training examples gets 0 (no example carries it; a soft
    label's share of it then adds nothing)."""
    total, classes = sum(per_class), len(per_class)
    return tuple(total / (classes * n) if n else 0.0 for n in per_class)


def summary_lines(class_names: Sequence[str], counts: Counts) -> list[str]:
    """One line per non-empty split: every class's count, or for many classes the range and
    the fewest and most."""
    lines = []
    for split, per_class in counts.items():
        if sum(per_class) == 0:
            continue
        pairs = list(zip(class_names, per_class, strict=True))
        if len(pairs) <= LISTED:
            text = ", ".join(f"{name} {n:,}" for name, n in pairs)
        else:
            ranked = sorted(pairs, key=lambda pair: pair[1])
            text = (f"{ranked[0][1]:,} to {ranked[-1][1]:,} over {len(pairs):,} classes; fewest "
                    f"{_named(ranked[:EXTREMES])}; most {_named(ranked[::-1][:EXTREMES])}")
        lines.append(f"Examples per class, {split}: {text}")
    return lines


def imbalance(class_names: Sequence[str], counts: Counts) -> str | None:
    """A one-line warning when the largest training class has ``IMBALANCE_RATIO`` times the
    examples of the smallest (or the smallest has none), else None."""
    per_class = counts.get("train")
    if not per_class or sum(per_class) == 0:
        return None
    low = min(range(len(per_class)), key=per_class.__getitem__)
    high = max(range(len(per_class)), key=per_class.__getitem__)
    small, large = per_class[low], per_class[high]
    if small > 0 and large < IMBALANCE_RATIO * small:
        return None
    ratio = f"{large / small:.1f}x" if small else "none at all"
    return (f"Imbalanced training split: {class_names[high]} has {large:,} examples, "
            f"{class_names[low]} {small:,} ({ratio}); accuracy can hide how the small classes do "
            f"(see the per-class recall on the test split).")


def markdown_table(class_names: Sequence[str], counts: Counts) -> list[str]:
    """report.md's table of examples per class and split (no lines when none were counted)."""
    if not counts:
        return []
    splits = list(counts)
    rows = [f"| {name} | " + " | ".join(f"{counts[s][i]:,}" for s in splits) + " |"
            for i, name in enumerate(class_names)]
    totals = " | ".join(f"**{sum(counts[s]):,}**" for s in splits)
    return ["| class | " + " | ".join(splits) + " |",
            "| --- | " + " | ".join("---:" for _ in splits) + " |",
            *rows, f"| **all** | {totals} |"]


def _named(pairs: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in pairs)
