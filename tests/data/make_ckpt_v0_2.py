"""Writes tests/data/ckpt_v0_2_*: checkpoints saved by nnx_momentum 0.2.0 (commit f64fe9d).

0.2 laid the optax state out by hyperparameter *values* (the velocity sat at
``inner_state/0``, ``/1`` or ``/2`` by how many clip and decay steps were on);
0.3 keeps one path per leaf. These fixtures pin the 0.2 layouts that 0.3 must
still restore:

- ``ckpt_v0_2_plain``: ``MomentumOptimizer`` with ``grad_clip_value`` and
  Nesterov, no weight decay (velocity at ``inner_state/1`` in 0.2);
- ``ckpt_v0_2_groups``: two parameter groups (group 0 with weight decay, group 1
  without, Nesterov), both clips.

Run by hand from the repository root at the release whose format is pinned:
``python tests/data/make_ckpt_v0_2.py``. (pytest imports every module under
tests/ for doctests, so the work is under ``__main__``.)
"""

import os
import shutil
import sys

FIXTURES = {
    "plain": dict(weight_decay=0.0, grad_clip_norm=None, grad_clip_value=0.05, nesterov=True),
    "groups": dict(weight_decay=1e-3, grad_clip_norm=0.5, grad_clip_value=0.05),
}


def make_optimizer(name, model):
    """The optimizer of fixture ``name`` (also used by tests/test_checkpoint_compat.py)."""
    from flax import nnx

    import nnx_momentum as nm

    scheduler = nm.StepLR([0.1, 0.05] if name == "groups" else 0.1, step_size=2, gamma=0.5)
    groups = (
        [nm.ParamGroup(nnx.PathContains("fc2"), weight_decay=0.0, nesterov=True)]
        if name == "groups"
        else []
    )
    return nm.MomentumOptimizer(model, lr=scheduler, momentum=0.9, groups=groups, **FIXTURES[name])


def main() -> None:
    sys.path.insert(0, "tests/_ckpt_scripts")
    import common
    import jax
    import numpy as np
    from flax import nnx

    import nnx_momentum as nm

    for name in FIXTURES:
        out = os.path.abspath(f"tests/data/ckpt_v0_2_{name}")
        shutil.rmtree(out, ignore_errors=True)
        model = common.Net(0)
        opt = make_optimizer(name, model)
        for i in range(3):
            common.train_step("opt", model, opt, i)
        with nm.Checkpointer(out, options=nm.CheckpointOptions(async_save=False)) as ck:
            ck.save(3, model, opt, metrics={"loss": 0.5}, extra={"epoch": 1})
        flat = {}
        for prefix, tree in (("model", nnx.state(model)), ("optimizer", opt.state_tree())):
            for p, v in nnx.to_flat_state(tree):
                val = v.get_value()
                if jax.dtypes.issubdtype(val.dtype, jax.dtypes.prng_key):
                    val = jax.random.key_data(val)
                flat[prefix + "/" + "/".join(map(str, p))] = np.asarray(val)
        np.savez(f"tests/data/ckpt_v0_2_{name}_expected.npz", **flat)


if __name__ == "__main__":
    main()
