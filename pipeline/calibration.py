"""Calibrated probabilities: temperature scaling of the grader's outputs, fitted on validation.

A network's softmax is typically over-confident. Temperature scaling divides its logits by one
number T fitted to minimise the negative log-likelihood on the validation set (Guo et al., 2017):
grades by argmax do not change, the probabilities do. It is applied here to the grader's
probabilities themselves, as softmax(log p / T), i.e. p^(1/T) renormalised: for a plain head that
is exactly temperature scaling of its logits (log p differs from them by a constant per photo,
which the softmax cancels); for the ordinal head and flip-averaged outputs, whose probabilities
are no softmax of one set of logits, it is the same one-parameter sharpening or softening, which
keeps every photo's order of grades and is fitted the same way.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

log = logging.getLogger(__name__)

# The temperatures searched: a network 20x over- or under-confident is outside any sensible range.
TEMPERATURE_BOUNDS = (0.05, 20.0)
_TINY = np.finfo(np.float64).tiny


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` of each row: the probabilities at temperature ``temperature``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return probabilities
    return np.exp(log_softmax(np.log(np.maximum(probabilities, _TINY)) / temperature, axis=1))


def true_grade_log_loss(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """-log p(true grade) of each row."""
    rows = np.arange(len(targets))
    return -np.log(np.maximum(np.asarray(probabilities, dtype=np.float64)[rows, targets], _TINY))


def negative_log_likelihood(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean -log p(true grade) over the rows."""
    return float(true_grade_log_loss(targets, probabilities).mean())


def fit_temperature(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``targets`` (bounded search
    over log T); 1 when the probabilities are not finite or there is nothing to fit on."""
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(targets) == 0 or not np.isfinite(probabilities).all():
        log.warning("no temperature can be fitted (no photos, or non-finite outputs): probabilities kept as they are")
        return 1.0
    logits = np.log(np.maximum(probabilities, _TINY))
    rows = np.arange(len(targets))

    def nll(log_temperature: float) -> float:
        return float(-log_softmax(logits / np.exp(log_temperature), axis=1)[rows, targets].mean())

    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    temperature = float(np.exp(result.x))
    log.info("temperature %.4f: validation NLL %.4f (uncalibrated %.4f)", temperature, result.fun, nll(0.0))
    return temperature
