"""nnx_momentum.tree: one notion of a path, one rule for loading state."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models import MLP

from nnx_momentum import tree


def test_state_pure_dict_and_string_keyed_dict_flatten_alike():
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    as_strings = jax.tree.map(
        np.asarray, {"layers": {str(k): v for k, v in pure["layers"].items()}}
    )
    keys = set(tree.flatten(state))
    assert keys == set(tree.flatten(pure)) == set(tree.flatten(as_strings))
    assert ("layers", "0", "kernel") in keys
    assert all(isinstance(v, nnx.Variable) for v in tree.flatten(state).values())


def test_nest_inverts_flatten():
    pure = {"a": {"b": np.ones(2), "c": {"d": np.zeros(1)}}}
    assert jax.tree.structure(tree.nest(tree.flatten(pure))) == jax.tree.structure(pure)


def test_check_like_names_the_path():
    want = {"l1": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    with pytest.raises(ValueError, match=r"missing paths \['l1/bias'\]"):
        tree.check_like(want, {"l1": {"kernel": jnp.ones((2, 3))}})
    with pytest.raises(ValueError, match=r"l1/kernel: expected shape \(2, 3\), got \(3, 2\)"):
        tree.check_like(want, {"l1": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(3)}})
    with pytest.raises(ValueError, match="l1/bias: expected dtype float32, got int32"):
        tree.check_like(want, {"l1": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3, jnp.int32)}})


def test_load_into_refuses_casts_and_is_all_or_nothing():
    model = MLP(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    bad = jax.tree.map(lambda x: jnp.zeros_like(x), nnx.to_pure_dict(nnx.state(model)))
    bad["l2"]["bias"] = bad["l2"]["bias"].astype(jnp.bfloat16)
    with pytest.raises(ValueError, match="l2/bias: expected dtype float32, got bfloat16"):
        tree.load_into(nnx.state(model), bad)
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing half-loaded


def test_load_into_copies_and_keeps_the_live_sharding():
    model = MLP(nnx.Rngs(0))
    values = jax.tree.map(lambda x: x + 1, nnx.to_pure_dict(nnx.state(model)))
    tree.load_into(model, values)
    kernel = model.l1.kernel.get_value()
    assert kernel is not values["l1"]["kernel"]
    np.testing.assert_array_equal(kernel, values["l1"]["kernel"])
    assert kernel.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_match_grads_by_path():
    model = MLP(nnx.Rngs(0))
    weights = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.to_pure_dict(weights))
    matched = tree.match_grads(weights, grads)
    assert set(tree.flatten(matched)) == set(tree.flatten(weights))
    del grads["l2"]["bias"]
    with pytest.raises(ValueError, match=r"missing paths \['l2/bias'\]"):
        tree.match_grads(weights, grads)


def test_live_variables_refuses_pure_values():
    with pytest.raises(TypeError, match="'w' is a"):
        tree.live_variables({"w": jnp.ones(1)}, "test")


def test_no_hand_written_flatteners_left_in_the_package():
    """Flattening lives in tree.py only (the one tree module)."""
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "nnx_momentum")
    offenders = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py") and name != "tree.py":
                with open(os.path.join(dirpath, name)) as f:
                    text = f.read()
                for helper in ("def _flatten", "def _nest", "def _live_variables", "def _flat("):
                    if helper in text:
                        offenders.append(f"{name}: {helper}")
    assert not offenders, offenders


def _counters():
    return {
        "step": nnx.Variable(jnp.asarray(3, jnp.uint32)),
        "lr": nnx.Variable(jnp.asarray(0.5, jnp.float32)),
        "half": nnx.Variable(jnp.asarray(1.0, jnp.bfloat16)),
        "epoch": nnx.Variable(jnp.asarray(2, jnp.int32)),
    }


def test_load_into_takes_plain_numbers_in_the_live_dtype():
    live = _counters()
    tree.load_into(live, {"step": 7, "lr": 0.1, "half": np.float64(0.25), "epoch": np.int64(4)})
    got = {k: v.get_value() for k, v in live.items()}
    assert {k: v.dtype for k, v in got.items()} == {
        "step": jnp.uint32,
        "lr": jnp.float32,
        "half": jnp.bfloat16,
        "epoch": jnp.int32,
    }
    assert int(got["step"]) == 7 and int(got["epoch"]) == 4
    assert got["lr"] == np.float32(0.1) and float(got["half"]) == 0.25
    tree.load_into(live, {"step": 8.0, "lr": 2, "half": 3, "epoch": 5})  # whole floats, ints
    assert int(live["step"].get_value()) == 8 and float(live["lr"].get_value()) == 2.0


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("step", -1, r"step: -1 does not fit the live uint32 exactly"),
        ("step", 2.5, r"step: 2.5 does not fit the live uint32 exactly"),
        ("step", 2**32, r"step: 4294967296 does not fit the live uint32"),
        ("step", float("nan"), r"step: nan does not fit"),
        ("epoch", float("inf"), r"epoch: inf does not fit the live int32"),
        ("lr", 1e300, r"lr: 1e\+300 does not fit the live float32 \(it would become inf\)"),
        ("lr", 2**24 + 1, r"lr: 16777217 does not fit the live float32"),
        ("half", 257, r"half: 257 does not fit the live bfloat16"),
    ],
)
def test_load_into_refuses_numbers_that_do_not_fit_naming_the_path(path, value, message):
    live = _counters()
    values = {"step": 1, "lr": 0.1, "half": 1.0, "epoch": 1, path: value}
    with pytest.raises(ValueError, match=message):
        tree.load_into(live, values)
    assert int(live["step"].get_value()) == 3 and float(live["lr"].get_value()) == 0.5


def test_load_into_still_refuses_arrays_shapes_and_kinds():
    live = _counters()
    with pytest.raises(ValueError, match="step: expected dtype uint32, got int32"):
        tree.load_into(live, {"step": jnp.asarray(1), "lr": 0.1, "half": 1.0, "epoch": 1})
    with pytest.raises(ValueError, match="step: expected dtype uint32, got bool"):
        tree.load_into(live, {"step": True, "lr": 0.1, "half": 1.0, "epoch": 1})
    vector = {"v": nnx.Variable(jnp.zeros(3, jnp.float32))}
    with pytest.raises(ValueError, match=r"v: expected shape \(3,\), got \(\)"):
        tree.load_into(vector, {"v": 1.0})
    assert int(live["step"].get_value()) == 3
