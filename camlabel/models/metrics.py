"""Classification metrics in plain NumPy (no scikit-learn dependency).

:func:`classification_metrics` returns one JSON-ready dict::

    {
      "n": 90,
      "classes": ["covid", "pneumonia", "normal"],
      "accuracy": 0.91,
      "macro_f1": 0.90,
      "macro_auc": 0.97,                  # one-vs-rest ROC AUC, mean over classes that have one
      "per_class": {
        "covid": {"precision": 0.95, "recall": 0.9, "f1": 0.92, "support": 30, "auc": 0.98},
        ...
      },
      "confusion_matrix": {"labels": [...], "matrix": [[...], ...]}   # rows: true, cols: predicted
    }

Undefined values (precision of a class never predicted, AUC of a class without positives
or negatives) are ``null``. A class that is present but never predicted (or predicted but
absent) has F1 0 (scikit-learn's ``zero_division=0``); a class neither present nor
predicted is left out of ``macro_f1``; classes without an AUC are left out of
``macro_auc``. ``auc`` is the one-vs-rest ROC AUC of the class probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; rows are true classes, columns predicted."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def roc_auc(y_true_binary: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Returns ``None`` when only one class is present.
    """
    y = np.asarray(y_true_binary, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0  # 1-based average rank
        i = j + 1
    return ranks


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support/ROC AUC, macro-F1, macro AUC, confusion."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(
            f"probabilities must have shape ({len(y)}, {k}). Received: shape={p.shape}"
        )
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, np.int64)
    cm = confusion_matrix(y, pred, k)
    per_class: dict[str, dict[str, Any]] = {}
    f1s: list[float] = []
    aucs: list[float] = []
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        predicted = int(cm[:, i].sum())
        support = int(cm[i, :].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        if precision and recall:
            f1: float | None = 2 * precision * recall / (precision + recall)
        else:
            f1 = 0.0 if (predicted or support) else None
        auc = roc_auc(y == i, p[:, i]) if len(y) else None
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "auc": auc,
        }
        if f1 is not None:
            f1s.append(f1)
        if auc is not None:
            aucs.append(auc)
    return {
        "n": len(y),
        "classes": list(classes),
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(classes), "matrix": cm.tolist()},
    }
