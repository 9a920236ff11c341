"""How closely one model's outputs follow another's, on the same samples:
the centred cosine that validation, the automatic loop and the sensitivity
sweep all report. Numpy only (the sweep's workers import it)."""
from __future__ import annotations

import numpy as np


def centred_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Centred cosine of each sample's values (rows of (samples, values)),
    1.0 where both rows are flat. With one value per sample (a wake-word
    score, a quality rating, a regression) a row's centred cosine is always
    1.0 (and uncentred, only whether the sign stayed), so the samples are
    compared as one vector instead: one cosine, across the samples."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if a.shape[1] == 1 and len(a) > 1:
        return np.array([across_samples(a[:, 0], b[:, 0])])
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, np.einsum("ij,ij->i", a, b) / np.maximum(den, 1e-300), 1.0)


def across_samples(a: np.ndarray, b: np.ndarray) -> float:
    """One value per sample, compared as one centred vector: how well the
    second model's values follow the first's across samples. Two constant
    outputs agree only if they are equal."""
    x, y = a - a.mean(), b - b.mean()
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-30)
    if nx <= 1e-9 * scale * np.sqrt(len(a)) and ny <= 1e-9 * scale * np.sqrt(len(b)):
        return 1.0 if np.allclose(a, b, rtol=1e-3, atol=1e-6 * scale) else 0.0
    if nx == 0 or ny == 0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))
