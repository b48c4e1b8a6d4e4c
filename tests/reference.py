"""An independent numpy implementation of the update, the test oracle.

Written from the six numbered lines of README.md's "The update, exactly" (the same math
as ``nm.momentum``'s docstring), not from the package's code.
"""

from __future__ import annotations

import numpy as np


def momentum_reference(
    params: dict[str, np.ndarray],
    grads_seq: list[dict[str, np.ndarray]],
    lrs: list[float],
    *,
    momentum: float,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
    grad_clip_value: float | None = None,
    grads_fn=None,
) -> list[dict[str, np.ndarray]]:
    """Parameters after each step; float64 arithmetic on float32 inputs.

    ``grads_fn(params) -> grads`` may replace ``grads_seq`` so that the
    gradient depends on the current parameters (a real training trajectory).
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    history = []
    for t, lr in enumerate(lrs):
        g_in = grads_fn(p) if grads_fn is not None else grads_seq[t]
        g = {k: np.asarray(x, np.float64) for k, x in g_in.items()}
        if grad_clip_norm is not None:
            norm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
            scale = min(1.0, grad_clip_norm / norm) if norm > 0 else 1.0
            g = {k: x * scale for k, x in g.items()}
        if grad_clip_value is not None:
            g = {k: np.clip(x, -grad_clip_value, grad_clip_value) for k, x in g.items()}
        g = {k: x + weight_decay * p[k] for k, x in g.items()}
        v = {k: momentum * v[k] + g[k] for k in p}
        u = {k: g[k] + momentum * v[k] for k in p} if nesterov else v
        p = {k: p[k] - lr * u[k] for k in p}
        history.append({k: x.copy() for k, x in p.items()})
    return history
