"""Writes tests/data/ckpt_v0_1: a checkpoint saved by nnx_momentum 0.1.0 (commit 1310b32).

Run by hand from the repository root, only at a release whose format is to be
pinned: ``python tests/data/make_ckpt_v0_1.py``. (pytest imports every module
under tests/ for doctests, so the work is under ``__main__``.)
"""

import os
import shutil
import sys


def main() -> None:
    sys.path.insert(0, "tests/_ckpt_scripts")
    import common
    import jax
    import numpy as np
    from flax import nnx

    import nnx_momentum as nm

    out = os.path.abspath("tests/data/ckpt_v0_1")
    shutil.rmtree(out, ignore_errors=True)
    model = common.Net(0)
    opt = common.make_optimizer("opt", model)
    for i in range(3):
        common.train_step("opt", model, opt, i)
        opt.lr.step()  # train_step steps it too: epoch 6 after 3 updates
    with nm.Checkpointer(out, options=nm.CheckpointOptions(async_save=False)) as ck:
        ck.save(3, model, opt, metrics={"loss": 0.5}, extra={"epoch": 1})
    flat = {}
    for prefix, tree in (("model", nnx.state(model)), ("optimizer", opt.state_tree())):
        for p, v in nnx.to_flat_state(tree):
            val = v.get_value()
            if jax.dtypes.issubdtype(val.dtype, jax.dtypes.prng_key):
                val = jax.random.key_data(val)
            flat[prefix + "/" + "/".join(map(str, p))] = np.asarray(val)
    np.savez("tests/data/ckpt_v0_1_expected.npz", **flat)


if __name__ == "__main__":
    main()
