"""A checkpoint written by nnx_momentum 0.1.0 still restores, bit for bit, into both faces.

``tests/data/ckpt_v0_1`` was saved by ``tests/data/make_ckpt_v0_1.py`` at the 0.1.0
release (3 updates of ``common.Net`` with ``MomentumOptimizer`` and a ``StepLR``);
``ckpt_v0_1_expected.npz`` holds every array it saved, by path.
"""

from __future__ import annotations

import os
import shutil
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ckpt_scripts"))
import common  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


def _flat(model, optimizer) -> dict[str, np.ndarray]:
    flat = {}
    for prefix, tree in (("model", nnx.state(model)), ("optimizer", optimizer.state_tree())):
        for path, var in nnx.to_flat_state(tree):
            value = var.get_value()
            if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
                value = jax.random.key_data(value)
            flat[prefix + "/" + "/".join(map(str, path))] = np.asarray(value)
    return flat


@pytest.mark.parametrize("face", ["opt", "bt"])
def test_v0_1_checkpoint_restores_bit_exact(tmp_path, face):
    directory = tmp_path / "ckpt"
    shutil.copytree(os.path.join(DATA, "ckpt_v0_1"), directory)
    model = common.Net(seed=7)  # other initial values: the restore must overwrite them
    optimizer = common.make_optimizer(face, model)
    with nm.Checkpointer(str(directory)) as ckpt:
        assert ckpt.all_steps() == [3]
        assert ckpt.restore(model, optimizer) == 3
        meta = ckpt.metadata()
    assert meta is not None and meta["extra"] == {"epoch": 1}
    want = dict(np.load(os.path.join(DATA, "ckpt_v0_1_expected.npz")))
    got = _flat(model, optimizer)
    # State added since 0.1.0 (``since`` metadata) is absent from the checkpoint: it
    # keeps its live value.
    added = {"optimizer/lr/epoch_fraction"}
    assert got.keys() - added == want.keys()
    assert float(got["optimizer/lr/epoch_fraction"]) == 0.0
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert optimizer.step_count == 3 and int(optimizer.lr.last_epoch[...]) == 6
