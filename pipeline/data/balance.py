"""Counter-weighting the grade imbalance (EyePACS is ~73 % grade 0): loss and sampling weights."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from pipeline.catalog import NUM_GRADES


def balanced_weights(grades: np.ndarray) -> np.ndarray:
    """scikit-learn's "balanced" weights n / (grades * n_g) for every grade; 0 for absent grades."""
    present = np.unique(grades)
    weights = np.zeros(NUM_GRADES)
    weights[present] = compute_class_weight("balanced", classes=present, y=grades) * len(present) / NUM_GRADES
    return weights


def class_weights(grades: np.ndarray, scheme: str) -> torch.Tensor | None:
    """Cross-entropy weights per grade: None, inverse frequency, or its square root (a milder push)."""
    if scheme == "none":
        return None
    weights = balanced_weights(grades)
    if scheme == "sqrt_inverse":
        weights = np.sqrt(weights)
    elif scheme != "inverse":
        raise ValueError(f"class weighting scheme {scheme!r}")
    return torch.tensor(weights, dtype=torch.float32)
