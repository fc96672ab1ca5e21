"""The private Keras/TensorFlow contract NSGD and the preconditioner rely on, and the versions setup.cfg admits.

No public Keras extension point sees every (clipped, accumulated, all-reduced) gradient of a step at once,
which NSGD's coupled nudge ``E E^T g`` needs, so NSGD overrides the TensorFlow backend's private
``_backend_update_step``; ``optimizer_preconditioner`` reads the second-moment slots of Keras's adaptive
optimizers. These tests check each private piece by its behaviour, against values computed here by hand,
and fail with a message naming the missing piece and the supported versions when a new Keras changes it.
"""

import configparser
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from packaging.requirements import Requirement
from packaging.version import Version

SETUP_CFG = pathlib.Path(__file__).resolve().parents[1] / "setup.cfg"


def _bounds() -> dict:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    requirements = [Requirement(line) for line in config["options"]["install_requires"].split()]
    return {r.name: r.specifier for r in requirements if r.name in ("tensorflow", "keras")}


def _supported() -> str:
    bounds = _bounds()

    def text(specifier):  # lower bound first
        return ",".join(sorted(map(str, specifier), key=lambda s: not s.startswith(">")))
    return f"keras{text(bounds['keras'])} with tensorflow{text(bounds['tensorflow'])}"


def _broken(piece: str, user: str, detail: str = "") -> None:
    pytest.fail(
        f"Keras {keras.__version__} / TensorFlow {tf.__version__} changed {piece}, which {user} relies on"
        f"{': ' + detail if detail else ''}. tf_sharpest supports {_supported()} (setup.cfg); install a "
        "supported pair, or adapt the code to the new Keras and widen the bounds.", pytrace=False)


def _require(owner, name: str, user: str, where: str):
    if not hasattr(owner, name):
        _broken(f"{where}.{name} (it no longer exists)", user)
    return getattr(owner, name)


# -- the versions ----------------------------------------------------------------------------------


def test_setup_cfg_bounds_admit_the_installed_versions():
    bounds = _bounds()
    assert set(bounds) == {"tensorflow", "keras"}, f"setup.cfg must bound both tensorflow and keras: {bounds}"
    for name, specifier in bounds.items():
        assert any(s.operator == ">=" for s in specifier), f"{name}{specifier} has no lower bound"
        assert any(s.operator == "<" for s in specifier), f"{name}{specifier} has no upper bound"
    # tf.__version__, not the distribution's: tensorflow-cpu (used by .ci/oldest.sh) provides the same module.
    installed = {"tensorflow": Version(tf.__version__).base_version, "keras": keras.__version__}
    for name, version in installed.items():
        assert bounds[name].contains(version), (
            f"{name} {version} is installed but setup.cfg admits {name}{bounds[name]} ({_supported()}): "
            "install a supported version, or run the suite on this one and move the bound (a new floor is "
            "what .ci/oldest.sh installs).")


# -- NSGD's hooks --------------------------------------------------------------------------------------


def test_backend_update_step_receives_every_clipped_gradient_at_once():
    """NSGD overrides it: Keras must call it once per step with all (clipped) gradients and the learning rate."""
    _require(keras.optimizers.Optimizer, "_backend_update_step", "NSGD", "keras.optimizers.Optimizer")
    calls = []

    class Recording(keras.optimizers.SGD):
        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            calls.append(([np.array(g) for g in grads], list(trainable_variables), float(learning_rate)))
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    a, b = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones((2, 2), "float32"))
    grads = [np.array([3.0, 0.0, 0.0], "float32"), np.array([[0.0, 4.0], [0.0, 0.0]], "float32")]
    optimizer = Recording(learning_rate=0.5, global_clipnorm=1.0)
    optimizer.apply(grads, [a, b])
    if len(calls) != 1:
        _broken("Optimizer.apply -> _backend_update_step", "NSGD",
                f"called {len(calls)} times for one step, expected once with every gradient")
    seen_grads, seen_variables, learning_rate = calls[0]
    assert [v is w for v, w in zip(seen_variables, [a, b])] == [True, True]
    # The global norm is 5: the hook sees the gradients after clipping to norm 1.
    np.testing.assert_allclose(seen_grads[0], [0.6, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(seen_grads[1], [[0.0, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert learning_rate == pytest.approx(0.5)
    np.testing.assert_allclose(a.numpy(), [0.7, 1.0, 1.0], rtol=1e-6)


def test_all_reduce_sum_gradients_sums_over_replicas(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        variable = keras.Variable(np.zeros(2, "float32"))
        optimizer = keras.optimizers.SGD(learning_rate=0.1)
        optimizer.build([variable])
    if _require(optimizer, "_distribution_strategy", "NSGD", "Optimizer") is not strategy:
        _broken("Optimizer._distribution_strategy", "NSGD", "it is not the strategy the optimizer was created in")
    reduce = _require(optimizer, "_all_reduce_sum_gradients", "NSGD", "Optimizer")

    def replica_fn():
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
        gradient = tf.stack([replica + 1.0, 10.0 * replica])  # replica 0: [1, 0]; replica 1: [2, 10]
        (summed, _), = reduce([(gradient, variable.value)])
        indices.append(optimizer._get_variable_index(variable.value))  # a replica's own component
        return summed

    indices = []
    summed = strategy.run(tf.function(replica_fn))
    for value in strategy.experimental_local_results(summed):
        np.testing.assert_allclose(value.numpy(), [3.0, 10.0])
    assert indices == [0, 0]


def test_get_variable_index_follows_the_build_order():
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in [(2,), (3, 1), (1,)]]
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(variables)
    index = _require(optimizer, "_get_variable_index", "NSGD and optimizer_preconditioner", "Optimizer")
    # NSGD and the preconditioner pass both keras.Variables and their tf.Variable values.
    assert [index(v) for v in variables] == [0, 1, 2]
    assert [index(v.value) for v in variables] == [0, 1, 2]


def test_maybe_merge_call_runs_in_cross_replica_context(mirrored_strategy):
    interim = getattr(getattr(getattr(tf, "__internal__", None), "distribute", None), "interim", None)
    merge = getattr(interim, "maybe_merge_call", None)
    if merge is None:
        _broken("tf.__internal__.distribute.interim.maybe_merge_call (it no longer exists)", "NSGD")
    seen = []

    def merged(distribution, value):
        seen.append((distribution, tf.distribute.in_cross_replica_context()))
        return value

    merge(merged, tf.distribute.get_strategy(), 1.0)  # no strategy: called directly
    mirrored_strategy.run(tf.function(lambda: merge(merged, mirrored_strategy, tf.constant(2.0))))
    assert seen[0][0] is tf.distribute.get_strategy()
    assert seen[-1][0] is mirrored_strategy and bool(seen[-1][1]), seen


# -- the preconditioner's slots ------------------------------------------------------------------------

GRADIENT = np.array([0.5, -2.0, 3.0], "float32")


@pytest.mark.parametrize("optimizer, expected", [
    # One step from a fresh state, by each optimizer's published update rule.
    (lambda: keras.optimizers.Adam(beta_2=0.99, amsgrad=True),
     {"_velocities": 0.01 * GRADIENT ** 2, "_velocity_hats": 0.01 * GRADIENT ** 2}),
    (lambda: keras.optimizers.AdamW(beta_2=0.9), {"_velocities": 0.1 * GRADIENT ** 2}),
    (lambda: keras.optimizers.Nadam(beta_2=0.99), {"_velocities": 0.01 * GRADIENT ** 2}),
    (lambda: keras.optimizers.Adamax(), {"_u": np.abs(GRADIENT)}),
    (lambda: keras.optimizers.RMSprop(rho=0.8, centered=True),
     {"_velocities": 0.2 * GRADIENT ** 2, "_average_gradients": 0.2 * GRADIENT}),
    (lambda: keras.optimizers.Adagrad(initial_accumulator_value=0.1), {"_accumulators": 0.1 + GRADIENT ** 2}),
], ids=["Adam", "AdamW", "Nadam", "Adamax", "RMSprop", "Adagrad"])
def test_adaptive_optimizer_slots_hold_the_second_moments(optimizer, expected):
    optimizer = optimizer()
    variables = [keras.Variable(np.zeros(3, "float32")), keras.Variable(np.zeros(3, "float32"))]
    optimizer.apply([GRADIENT, 2.0 * GRADIENT], variables)
    for attribute, values in expected.items():
        slots = _require(optimizer, attribute, "optimizer_preconditioner",
                         f"keras.optimizers.{type(optimizer).__name__}")
        if len(slots) != len(variables):
            _broken(f"{type(optimizer).__name__}.{attribute}", "optimizer_preconditioner",
                    f"{len(slots)} slots for {len(variables)} variables")
        got = slots[optimizer._get_variable_index(variables[0])].numpy()
        if not np.allclose(got, values, rtol=1e-5):
            _broken(f"{type(optimizer).__name__}.{attribute}", "optimizer_preconditioner",
                    f"after one step it holds {got}, expected {values}")
