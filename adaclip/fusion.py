"""Hybrid semantic fusion: K-means over the most abnormal patches refines the image feature."""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits


def select_points(probs: torch.Tensor, patch_features: torch.Tensor, topk: int) -> torch.Tensor:
    """Gathers each image's most abnormal patches, all layers side by side.

    Args:
        probs: Patch anomaly probabilities, ``(B, L)`` in [0, 1].
        patch_features: L2-normalised patch features of every output layer, ``(B, N, L, E)``.
        topk: How many of the most abnormal patches to keep.

    Returns:
        ``(B, k, N*E)`` with ``k = min(L, topk)``, in descending order of probability (the
        order reaches K-means and changes its result).
    """
    B, N, L, E = patch_features.shape
    k = min(L, topk)
    order = probs.topk(k, dim=1, sorted=True).indices  # (B, k)
    index = order[:, None, :, None].expand(B, N, k, E)
    chosen = patch_features.gather(2, index)  # (B, N, L, E) -> (B, N, k, E)
    return chosen.permute(0, 2, 1, 3).reshape(B, k, N * E)  # (B, N, k, E) -> (B, k, N*E)


def cluster_centres(points: np.ndarray, n_clusters: int, seed: int, num_layers: int) -> np.ndarray:
    """K-means per image, then the mean of the cluster centres: ``(B, k, N*E) -> (B, E)``.

    Args:
        points: Output of :func:`select_points` as float32 numpy.
        n_clusters: Number of clusters ``K`` (fewer if there are fewer points).
        seed: K-means random state, so the same image always gives the same result.
        num_layers: ``N``, the number of layers laid side by side in each point.

    Returns:
        The unnormalised fused feature of each image, float32.
    """
    return _cluster_all(points, min(n_clusters, points.shape[1]), seed, num_layers)


def _cluster_all(points: np.ndarray, n_clusters: int, seed: int, num_layers: int) -> np.ndarray:
    """Runs the per-image K-means of a batch side by side: ``(B, k, N*E) -> (B, E)``.

    Each fit is small (one of scikit-learn's 256-point chunks), so BLAS and OpenMP threads
    only add start-up and spin-wait costs (2-10x slower here) without changing the result;
    the images use the cores instead.
    """
    with _ONE_BLAS_THREAD:
        if len(points) == 1 or _workers() == 1:
            return np.stack([_mean_of_centres(p, n_clusters, seed, num_layers) for p in points])
        fits = _pool().map(lambda p: _mean_of_centres(p, n_clusters, seed, num_layers), points)
        return np.stack(list(fits))


def _workers() -> int:
    return os.cpu_count() or 1


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """One pool for the whole process, shared by concurrent batches."""
    return ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="adaclip-kmeans")


class _SharedThreadLimit:
    """BLAS and OpenMP at one thread while any batch clusters, restored when the last is done.

    The limit is process-wide, so callers that overlap (concurrent requests) share one: the
    first sets it and the last restores the original, never a limited value saved by another.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.limiter: threadpool_limits | None = None

    def __enter__(self) -> None:
        with self.lock:
            if self.users == 0:
                self.limiter = threadpool_limits(limits=1)
            self.users += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.limiter.restore_original_limits()
                self.limiter = None


_ONE_BLAS_THREAD = _SharedThreadLimit()


def _mean_of_centres(points: np.ndarray, n_clusters: int, seed: int, num_layers: int) -> np.ndarray:
    """K-means on ``(k, N*E)`` points; returns the mean of the per-cluster means, ``(E,)``.

    A cluster's centre is the mean of its members' features over all layers, so each
    member contributes ``num_layers`` vectors of width ``E``.
    """
    labels = KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed).fit_predict(points)
    k, width = points.shape
    per_layer = points.reshape(k, num_layers, width // num_layers)  # (k, N*E) -> (k, N, E)
    centres = [per_layer[labels == c].mean(axis=(0, 1)) for c in np.unique(labels)]
    return np.mean(centres, axis=0)
