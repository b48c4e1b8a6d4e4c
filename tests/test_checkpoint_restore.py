"""Restore variants of nnx_momentum.checkpoint: model only, abstract objects, optional Variables.

README.md, "Checkpoint and resume": ``restore(model)`` loads the model alone;
objects built by ``nnx.eval_shape`` come back concrete and trainable; a Variable
added to the state layout later (``since`` metadata) may be absent from an
older checkpoint and keeps its live value. Also: ``step`` must be a
non-negative int.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum.checkpoint import Checkpointer

sys.path.insert(0, str(Path(__file__).parent / "_ckpt_scripts"))
import common  # noqa: E402


def _build(seed: int = 0):
    model = common.Net(seed=seed)  # Params, BatchStats, Dropout RNG keys
    return model, common.make_optimizer("opt", model)


def _trained(tmp_path, steps: int = 2):
    model, opt = _build()
    for i in range(steps):
        common.train_step("opt", model, opt, i)
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(steps, model, opt, extra={"next": steps})
    return tmp_path / "c", model, opt


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _model_arrays(model) -> dict[str, np.ndarray]:
    return {k: v for k, v in common.flat_arrays(model, _NoOpt()).items() if k.startswith("model/")}


class _NoOpt:
    def state_tree(self):
        return nnx.State({})


def _leaf_types(*trees) -> set[str]:
    return {type(v.get_value()).__name__ for _, v in nnx.to_flat_state(nnx.state(trees))}


# -- step ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [3.7, 3.0, True, -1, "3", None, np.float32(2)])
def test_step_must_be_a_non_negative_int(tmp_path, bad):
    model, opt = _build()
    with Checkpointer(tmp_path / "c") as ckpt:
        with pytest.raises(ValueError, match=r"step must be a non-negative int"):
            ckpt.save(bad, model, opt)
        assert ckpt.all_steps() == []
        if bad is not None:
            with pytest.raises(ValueError, match=r"step must be a non-negative int"):
                ckpt.restore(model, opt, step=bad)


def test_integer_like_steps_are_accepted(tmp_path):
    model, opt = _build()
    with Checkpointer(tmp_path / "c") as ckpt:
        assert ckpt.save(np.int64(4), model, opt)
        assert ckpt.save(jnp.asarray(6, jnp.int32), model, opt)
        assert ckpt.all_steps() == [4, 6]
        assert ckpt.restore(model, opt, step=np.int32(4)) == 4


# -- model only ------------------------------------------------------------------------------
def test_model_only_restore(tmp_path):
    directory, model, _ = _trained(tmp_path)
    fresh = common.Net(seed=9)
    with Checkpointer(directory) as ckpt:
        assert ckpt.restore(fresh) == 2
    _same(_model_arrays(fresh), _model_arrays(model))
    x = jnp.ones((4, 8))
    np.testing.assert_array_equal(fresh(x), model(x))  # same BatchNorm stats, same masks


def test_model_only_restore_is_validated(tmp_path):
    directory, _, _ = _trained(tmp_path)
    other = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    before = np.asarray(other.kernel[...]).copy()
    with (
        Checkpointer(directory) as ckpt,
        pytest.raises(
            ValueError,
            match=r"(?s)do not match step 2.*new params +model bias.*tree +model fc1/kernel",
        ),
    ):
        ckpt.restore(other)
    np.testing.assert_array_equal(other.kernel[...], before)


def test_model_only_ignores_the_optimizer_hyperparameters(tmp_path):
    directory, model, _ = _trained(tmp_path)
    fresh = common.Net(seed=3)
    with Checkpointer(directory) as ckpt:
        assert ckpt.restore(fresh, step=2) == 2  # no optimizer: nothing to compare
        other_opt = common.make_optimizer("opt", fresh, momentum=0.5)
        with pytest.raises(ValueError, match="hyperparams +momentum: 0.9 -> 0.5"):
            ckpt.restore(fresh, other_opt)


# -- abstract (nnx.eval_shape) ---------------------------------------------------------------
def test_abstract_objects_restore_concrete_and_trainable(tmp_path):
    model, opt = _build()
    for i in range(2):
        common.train_step("opt", model, opt, i)
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(2, model, opt)

    def build():
        m = common.Net(seed=5)
        return m, common.make_optimizer("opt", m)

    abstract_model, abstract_opt = nnx.eval_shape(build)
    assert _leaf_types(abstract_model, abstract_opt.state_tree()) == {"ShapeDtypeStruct"}
    with Checkpointer(tmp_path / "c") as ckpt:
        assert ckpt.restore(abstract_model, abstract_opt) == 2
    assert "ShapeDtypeStruct" not in _leaf_types(abstract_model, abstract_opt.state_tree())
    _same(common.flat_arrays(abstract_model, abstract_opt), common.flat_arrays(model, opt))
    assert abstract_opt.step_count == 2
    # trainable: one more step on each gives the same arrays
    common.train_step("opt", model, opt, 2)
    common.train_step("opt", abstract_model, abstract_opt, 2)
    _same(common.flat_arrays(abstract_model, abstract_opt), common.flat_arrays(model, opt))


def test_abstract_model_only(tmp_path):
    directory, model, _ = _trained(tmp_path)
    abstract = nnx.eval_shape(lambda: common.Net(seed=4))
    with Checkpointer(directory) as ckpt:
        assert ckpt.restore(abstract) == 2
    _same(_model_arrays(abstract), _model_arrays(model))


def test_abstract_sharded_objects_take_the_concrete_mesh(tmp_path):
    def build(seed):
        m = common.ShardedNet(seed=seed)
        return m, nm.MomentumOptimizer(m, lr=nm.StepLR(0.1, step_size=2), **common.HYPER)

    with jax.set_mesh(common.make_mesh()):
        model, opt = build(0)
        common.sharded_step(model, opt, 0)
        with Checkpointer(tmp_path / "c") as ckpt:
            ckpt.save(1, model, opt)
        abstract_model, abstract_opt = nnx.eval_shape(lambda: build(3))
        sharding = abstract_model.a.kernel.get_value().sharding
        assert isinstance(sharding.mesh, jax.sharding.AbstractMesh)
        with Checkpointer(tmp_path / "c") as ckpt:
            assert ckpt.restore(abstract_model, abstract_opt) == 1
        kernel = abstract_model.a.kernel[...]
        assert isinstance(kernel.sharding.mesh, jax.sharding.Mesh)  # concrete devices
        assert kernel.sharding.spec == sharding.spec  # the abstract struct's layout
        common.sharded_step(model, opt, 1)
        common.sharded_step(abstract_model, abstract_opt, 1)
    _same(common.flat_arrays(abstract_model, abstract_opt), common.flat_arrays(model, opt))


# -- optional Variables (``since``) ------------------------------------------------------------
def test_optional_variables_absent_from_an_older_checkpoint_keep_their_live_values(tmp_path):
    directory, model, opt = _trained(tmp_path)  # saved without the two Variables below
    fresh, fresh_opt = _build(seed=6)
    fresh_opt.lr.added_later = nm.SchedulerState(jnp.full((3,), 7.0), since="9.9.0")
    fresh.added_later = nnx.BatchStat(jnp.full((2,), -1.0), since="9.9.0")
    assert "lr" in fresh_opt.state_tree() and "added_later" in fresh_opt.state_tree()["lr"]
    with Checkpointer(directory) as ckpt:
        assert ckpt.restore(fresh, fresh_opt) == 2
    got = common.flat_arrays(fresh, fresh_opt)
    np.testing.assert_array_equal(got.pop("opt/lr/added_later"), np.full((3,), 7.0))
    np.testing.assert_array_equal(got.pop("model/added_later"), np.full((2,), -1.0))
    _same(got, common.flat_arrays(model, opt))  # everything else is the checkpoint's


def test_required_extra_variable_is_refused(tmp_path):
    directory, _, _ = _trained(tmp_path)
    fresh, fresh_opt = _build(seed=6)
    fresh_opt.lr.added_later = nm.SchedulerState(jnp.zeros(()))  # no ``since``: required
    before = common.flat_arrays(fresh, fresh_opt)
    with (
        Checkpointer(directory) as ckpt,
        pytest.raises(ValueError, match=r"tree +optimizer lr/added_later: \(absent\)"),
    ):
        ckpt.restore(fresh, fresh_opt)
    _same(common.flat_arrays(fresh, fresh_opt), before)


def test_abstract_optional_variable_absent_from_the_checkpoint_is_refused(tmp_path):
    directory, _, _ = _trained(tmp_path)

    def build():
        m = common.Net(seed=5)
        o = common.make_optimizer("opt", m)
        o.lr.added_later = nm.SchedulerState(jnp.zeros(()), since="9.9.0")
        return m, o

    abstract_model, abstract_opt = nnx.eval_shape(build)
    with (
        Checkpointer(directory) as ckpt,
        pytest.raises(ValueError, match=r"tree +optimizer lr/added_later: \(absent\) -> abstract"),
    ):
        ckpt.restore(abstract_model, abstract_opt)
    assert _leaf_types(abstract_model) == {"ShapeDtypeStruct"}  # nothing half-loaded
