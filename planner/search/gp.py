"""The Gaussian process over (P, C, B) that the Bayesian search believes about errors.

log(error) under Constant x Matern(nu=0.5) + White, anisotropic length scales refitted at 2, 4,
8, ... look-ups. nu=0.5 because recorded errors are rough: neighbouring schemes differ in both
directions (bench/results/search.md counts the inverted pairs); smoother kernels are
overconfident there. Bits enter as the quantisation step 2^(1-B), which the error follows
(it halves per bit and saturates), not linearly. The prior is optimistic (see GP.predict).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from planner.search.problem import CandidateSet


def features(cands: CandidateSet, idx: np.ndarray) -> np.ndarray:
    """Normalised (P, C, B) in [0, 1]^3: P linear, C as log fraction of the conv's width."""
    n_p = max(len(cands.conv_channels) - 1, 1)
    cmax = np.array(cands.conv_channels, dtype=float)[cands.partition[idx]]
    return np.column_stack([
        cands.partition[idx] / n_p,
        np.log(cands.channels[idx]) / np.log(np.maximum(cmax, 2.0)),
        2.0 ** (1 - cands.bits[idx])])   # relative quantisation step: 1 at 1 bit, 1/128 at 8


class GP:
    """A scikit-learn GP on log(error) with a Matern kernel; refits hyper-parameters sometimes."""

    def __init__(self, seed: int):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        self._gpr_cls = GaussianProcessRegressor
        self.kernel = (ConstantKernel(1.0, (1e-2, 1e2))
                       * Matern(length_scale=[0.3, 0.3, 0.3], length_scale_bounds=(0.03, 10.0), nu=0.5)
                       + WhiteKernel(1e-3, (1e-6, 1e-1)))
        self.seed = seed
        self.fits = 0

    def predict(self, x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of log(error) at x."""
        # hyper-parameters re-optimised at 2, 4, 8, ... points; otherwise kept (fast refit)
        optimise = len(x_train) & (len(x_train) - 1) == 0
        gpr = self._gpr_cls(kernel=self.kernel, normalize_y=False, random_state=self.seed,
                            optimizer="fmin_l_bfgs_b" if optimise else None)
        # optimistic prior: far from the data the GP reverts to the best error seen, not to
        # the mean (the search samples many bad schemes; a mean prior would call unexplored
        # regions hopeless and let the probabilistic stop close them unseen)
        lo, scale = y_train.min(), max(float(y_train.std()), 1e-9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gpr.fit(x_train, (y_train - lo) / scale)
            mu, sd = gpr.predict(x, return_std=True)
        mu, sd = mu * scale + lo, sd * scale
        self.kernel = gpr.kernel_
        self.fits += 1
        return mu, np.maximum(sd, 1e-6)


def norm_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr
    return ndtr(z)


def norm_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def prob_below(log_mu: np.ndarray, log_sd: np.ndarray, error: np.ndarray) -> np.ndarray:
    """P(error of a scheme < `error`) under a normal belief about its log(error)."""
    error = np.broadcast_to(error, np.broadcast_shapes(np.shape(log_mu), np.shape(error)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.log(np.maximum(error, 1e-300)) - log_mu) / log_sd
    z = np.where(error <= 0, -np.inf, np.where(np.isinf(error), np.inf, z))
    return np.clip(norm_cdf(np.nan_to_num(z, nan=0.0, posinf=np.inf, neginf=-np.inf)), 0.0, 1.0)


def truncated_means(log_mu: np.ndarray, log_sd: np.ndarray, error: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The expected error of a scheme given that it falls below / at or above `error` (from
    the mean of its log under the normal belief, truncated there)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = (np.log(np.maximum(error, 1e-300)) - log_mu) / log_sd
        a = np.nan_to_num(a, nan=0.0, posinf=40.0, neginf=-40.0)
        below = log_mu - log_sd * norm_pdf(a) / np.maximum(norm_cdf(a), 1e-300)
        above = log_mu + log_sd * norm_pdf(a) / np.maximum(norm_cdf(-a), 1e-300)
    return np.exp(below), np.exp(above)
