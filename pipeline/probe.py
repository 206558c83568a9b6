"""A linear probe: how much of a clip's action its cached features hold, read by a linear classifier.

    features [N, T, D] ─► mean over each clip's real frames ─► standardised (train statistics)
        ─► multinomial logistic regression (L2, fitted on the train clips) ─► top-1 on held-out clips

The classifier is fitted to convergence by L-BFGS on all train clips at once, with one fixed L2
weight: nothing is chosen on the held-out clips it is scored on. The usual test of a representation
(a frozen network is as good as what a linear layer can read from it), here the "features for
actions" score of `pretrain-compare`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import FoleyError

L2 = 1e-3                       # weight of the mean squared weight in the loss
MAX_ITER = 500


def clip_means(cache) -> tuple[np.ndarray, list[str]]:
    """[N, D] float64 means over each clip's real frames, and the clips' labels."""
    means, labels = [], []
    for k in range(cache.n_shards):
        shard = cache.read_shard(k)
        for feats, n, label in zip(shard["features"], shard["length"], shard["label"]):
            means.append(np.asarray(feats[:max(1, int(n))], np.float64).mean(0))
            labels.append(label)
    return np.stack(means), labels


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [D, K] and bias [K] of the L2-regularised multinomial logistic regression of y on x."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=MAX_ITER, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt) + L2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(train_cache, val_cache) -> dict:
    """Fit on `train_cache`'s clips, score on `val_cache`'s (FeatureCache objects). Returns {"top1",
    "chance", "classes", "train_clips", "val_clips", "train_top1"}; val clips of a class the train
    clips lack are left out (counted in "val_unknown")."""
    x_train, labels_train = clip_means(train_cache)
    x_val, labels_val = clip_means(val_cache)
    classes = sorted(set(labels_train))
    if len(classes) < 2:
        raise FoleyError(f"a linear probe needs at least 2 classes in the train cache, found {len(classes)}")
    index = {c: k for k, c in enumerate(classes)}
    keep = np.array([label in index for label in labels_val])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val[keep] - mean) / std
    y_train = np.array([index[c] for c in labels_train])
    y_val = np.array([index[c] for c, k in zip(labels_val, keep) if k])
    w, b = fit_probe(x_train, y_train, len(classes))
    top1 = lambda x, y: float(((torch.from_numpy(x) @ w + b).argmax(1).numpy() == y).mean()) if len(y) else None  # noqa: E731
    return {"top1": top1(x_val, y_val), "train_top1": top1(x_train, y_train), "chance": 1.0 / len(classes),
            "classes": len(classes), "train_clips": len(y_train), "val_clips": len(y_val),
            "val_unknown": int((~keep).sum())}
