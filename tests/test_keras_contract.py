"""The contract of each private Keras/TensorFlow access (``tf_sharpest/_keras_compat.py``), and the supported versions.

Each function of the compat module has a test here that checks the private piece by its behaviour, against
values computed by hand, and fails with a message naming the Keras and TensorFlow versions, the piece that
changed and its user when a new version changes it: NSGD's one hook on the final gradients of a step
(``_all_reduce_sum_gradients``), ``Optimizer._get_variable_index``, the second-moment slots the
preconditioner reads, the 1/R by which Keras divides losses under ``tf.distribute`` (``ModelLoss`` undoes
it), ``model.loss``, the ``LossScaleOptimizer`` of mixed precision, and the compiled metrics the loss
landscape copies."""

import configparser
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from packaging.requirements import Requirement
from packaging.version import Version

from tf_sharpest import _keras_compat

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


# -- the final gradients of a step (NSGD) --------------------------------------------------------------


class _Doubling(_keras_compat.FinalGradientsHook, keras.optimizers.SGD):
    """Records (eagerly) what the hook receives and returns it doubled: the step must then use the doubled values."""

    def _transform_final_gradients(self, gradients, variables):
        if tf.executing_eagerly():
            _SEEN.append(([np.array(g) for g in gradients], list(variables)))
        return [2.0 * tf.convert_to_tensor(g) for g in gradients]


_SEEN = []


def test_final_gradients_hook_sees_unscaled_accumulated_clipped_gradients_once_per_step():
    """NSGD's one private hook: Keras's TF backend must route every final gradient through _all_reduce_sum_gradients."""
    try:
        _Doubling._check_keras_calls_the_hook()
    except RuntimeError as error:
        _broken("Optimizer._all_reduce_sum_gradients (it no longer exists)", "NSGD", str(error))
    _SEEN.clear()
    a, b = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones((2, 2), "float32"))
    optimizer = _Doubling(learning_rate=0.5, name="doubling", loss_scale_factor=4.0, gradient_accumulation_steps=2,
                          clipvalue=3.5)
    # Unscaled: [6, 0, 0] then [0, 0, 0]; [[0, 0], [0, 0]] then [[0, 8], [0, 0]]. Their mean is [3, 0, 0] and
    # [[0, 4], [0, 0]]; clipped at 3.5: [3, 0, 0] and [[0, 3.5], [0, 0]]. Summed instead of averaged, or not
    # unscaled, both would clip to 3.5.
    optimizer.apply([4.0 * np.array([6.0, 0, 0], "float32"), np.zeros((2, 2), "float32")], [a, b])
    if _SEEN:
        _broken("Optimizer._all_reduce_sum_gradients", "NSGD", "it is called on a step that only accumulates")
    optimizer.apply([np.zeros(3, "float32"), 4.0 * np.array([[0, 8.0], [0, 0]], "float32")], [a, b])
    if len(_SEEN) != 1:
        _broken("Optimizer._backend_update_step -> _all_reduce_sum_gradients", "NSGD",
                f"called {len(_SEEN)} times for one applied step, expected once with every gradient")
    seen_gradients, seen_variables = _SEEN[0]
    if not all(v is w.value for v, w in zip(seen_variables, [a, b])):
        _broken("Optimizer._all_reduce_sum_gradients", "NSGD", "its variables are not the model's tf.Variables")
    if not (np.allclose(seen_gradients[0], [3.0, 0.0, 0.0], rtol=1e-6)
            and np.allclose(seen_gradients[1], [[0.0, 3.5], [0.0, 0.0]], rtol=1e-6)):
        _broken("Optimizer._all_reduce_sum_gradients", "NSGD", f"it received {seen_gradients}, expected the "
                "unscaled, averaged, clipped gradients [3, 0, 0] and [[0, 3.5], [0, 0]]")
    # update_step used what the hook returned (twice the gradient): 1 - 0.5 * 2 * 3 and 1 - 0.5 * 2 * 3.5.
    if not (np.allclose(a.numpy(), [-2.0, 1.0, 1.0], rtol=1e-6)
            and np.allclose(b.numpy(), [[1.0, -2.5], [1.0, 1.0]], rtol=1e-6)):
        _broken("Optimizer._backend_update_step", "NSGD", "update_step did not use the gradients "
                f"_all_reduce_sum_gradients returned (variables {a.numpy()}, {b.numpy()})")


def test_an_optimizer_without_the_hook_is_refused_at_construction():
    """If a Keras dropped _all_reduce_sum_gradients, NSGD would silently be SGD: it refuses to be built instead."""

    class Elsewhere(_keras_compat.FinalGradientsHook, keras.layers.Layer):  # a base without the private method
        pass

    with pytest.raises(RuntimeError, match=rf"Keras {keras.__version__} has no Optimizer._all_reduce_sum_gradients"):
        Elsewhere._check_keras_calls_the_hook()


def test_final_gradients_hook_sees_the_sum_over_replicas(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        variable = keras.Variable(np.zeros(2, "float32"))
        optimizer = _Doubling(learning_rate=0.1, name="doubling")
        optimizer.build([variable])

    def replica_fn():
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
        optimizer.apply([tf.stack([replica + 1.0, 10.0 * replica])], [variable])  # [1, 0] and [2, 10]

    strategy.run(tf.function(replica_fn))
    for value in strategy.experimental_local_results(variable.value):
        # Every replica's copy moved by -0.1 * 2 * [3, 10]: the hook saw the sum, and the step used its result.
        if not np.allclose(value.numpy(), [-0.6, -2.0], rtol=1e-6):
            _broken("Optimizer._all_reduce_sum_gradients under tf.distribute", "NSGD",
                    f"a replica's variable is {value.numpy()}, expected [-0.6, -2.0] (the hook on the summed gradient)")


def test_variable_index_follows_the_build_order():
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in [(2,), (3, 1), (1,)]]
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(variables)
    _require(optimizer, "_get_variable_index", "NSGD and optimizer_preconditioner", "Optimizer")
    # NSGD and the preconditioner pass both keras.Variables and their tf.Variable values.
    indices = ([_keras_compat.variable_index(optimizer, v) for v in variables],
               [_keras_compat.variable_index(optimizer, v.value) for v in variables])
    if indices != ([0, 1, 2], [0, 1, 2]):
        _broken("Optimizer._get_variable_index", "NSGD and optimizer_preconditioner",
                f"it gave {indices} for the build order [0, 1, 2] (keras.Variables, then their tf.Variables)")
    try:
        _keras_compat.variable_index(optimizer, keras.Variable(np.zeros(2, "float32")))
    except KeyError:
        pass
    else:
        _broken("Optimizer._get_variable_index", "optimizer_preconditioner",
                "it no longer raises KeyError for a variable the optimizer was not built on")


def test_saved_optimizer_state_is_keyed_by_position():
    """NSGD loads files of earlier releases (one variable fewer) with load_optimizer_variables."""
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in [(2,), (3, 1)]]
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.apply([np.ones(2, "float32"), np.ones((3, 1), "float32")], variables)
    store = {}
    optimizer.save_own_variables(store)
    expected = [str(i) for i in range(len(optimizer.variables))]
    if sorted(store, key=int) != expected or not all(
            np.array_equal(store[str(i)], v.numpy()) for i, v in enumerate(optimizer.variables)):
        _broken("Optimizer.save_own_variables", "NSGD.load_own_variables",
                f"it stored the keys {sorted(store)}, not optimizer.variables by position {expected}")
    fresh = keras.optimizers.SGD(momentum=0.9)
    fresh.build(variables)
    _keras_compat.load_optimizer_variables(store, fresh.variables)
    for mine, theirs in zip(fresh.variables, optimizer.variables):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


# -- losses under tf.distribute (ModelLoss) -------------------------------------------------------------


def _regularized_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(0.5))])


@pytest.mark.parametrize("compiled", ["loss_object", "function"])
def test_losses_are_divided_by_the_number_of_replicas(mirrored_strategy, compiled):
    """ModelLoss undoes the 1/R by which Keras's TF backend divides mean losses and additional losses."""
    strategy = mirrored_strategy
    x, y = np.array([[1.0, 2.0], [0.5, -1.0]], "float32"), np.array([[1.0], [3.0]], "float32")
    with strategy.scope():
        model = _regularized_model()
        loss = keras.losses.MeanSquaredError() if compiled == "loss_object" else (
            lambda y_true, y_pred: keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1))
        model.compile(loss=loss)
    y_pred = model(x).numpy()
    data = float(np.mean((y - y_pred) ** 2))
    regularization = float(0.5 * np.sum(model.layers[0].kernel.numpy() ** 2))

    def replica_fn():
        return (keras.losses.MeanSquaredError()(y, y_pred), keras.losses.MeanSquaredError(reduction="sum")(y, y_pred),
                model.compute_loss(x=x, y=y, y_pred=tf.constant(y_pred), training=True))

    mean, summed, total = (strategy.experimental_local_results(t)[0].numpy()
                           for t in strategy.run(tf.function(replica_fn)))
    if not np.isclose(mean, data / 2, rtol=1e-5) or not _keras_compat.loss_divided_by_replicas(
            keras.losses.MeanSquaredError()):
        _broken("keras.losses.Loss under tf.distribute", "ModelLoss",
                f"a mean-reduced loss on 2 replicas gave {mean}, expected {data / 2} (the batch mean / 2)")
    if not np.isclose(summed, 2 * data, rtol=1e-5) or _keras_compat.loss_divided_by_replicas(
            keras.losses.MeanSquaredError(reduction="sum")):
        _broken("keras.losses.Loss under tf.distribute", "ModelLoss", f"a sum-reduced loss gave {summed}, not "
                f"{2 * data}")
    scale = 0.5 if _keras_compat.ADDITIONAL_LOSSES_DIVIDED_BY_REPLICAS else 1.0
    if not np.isclose(total, data / 2 + scale * regularization, rtol=1e-5):
        _broken("Model.compute_loss under tf.distribute", "ModelLoss",
                f"it gave {total}, expected {data / 2} + {scale} * {regularization}: the compiled {compiled} "
                "(wrapped in a mean-reduced Loss) and the additional losses divided by 2 replicas")


def test_compile_sets_model_loss():
    model = _regularized_model()
    assert getattr(model, "loss", "missing") is None, "ModelLoss reads model.loss; an uncompiled model must have None"
    loss = keras.losses.MeanSquaredError()
    model.compile(loss=loss)
    if getattr(model, "loss", None) is not loss:
        _broken("Model.compile", "ModelLoss", "model.loss is not the loss passed to compile")


# -- mixed precision and the loss landscape's metrics ------------------------------------------------------


def test_mixed_precision_wraps_the_optimizer_and_unwrap_finds_it():
    optimizer = keras.optimizers.SGD(0.1)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _regularized_model()
        model.compile(optimizer=optimizer, loss="mse")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) or getattr(
            model.optimizer, "inner_optimizer", None) is not optimizer:
        _broken("Model.compile under mixed_float16", "LanczosCallback and optimizer_preconditioner (unwrap_optimizer)",
                f"model.optimizer is a {type(model.optimizer).__name__}, not a LossScaleOptimizer whose "
                "inner_optimizer is the optimizer passed")
    assert _keras_compat.unwrap_optimizer(model.optimizer) is optimizer
    assert _keras_compat.unwrap_optimizer(optimizer) is optimizer


def test_compiled_metrics_copy_computes_the_compiled_metrics_afresh():
    model = _regularized_model()
    model.compile(loss="mse", metrics=["mae"], weighted_metrics=[keras.metrics.MeanSquaredError(name="wmse")])
    y, y_pred = np.array([[1.0], [3.0]], "float32"), np.array([[0.0], [1.0]], "float32")
    try:
        copy = _keras_compat.compiled_metrics_copy(model)
    except (AttributeError, TypeError) as error:
        _broken("Model._compile_metrics (CompileMetrics)", "the loss landscape", f"copying it failed: {error}")
    if not isinstance(copy, keras.metrics.Metric) or copy is getattr(model, "_compile_metrics", None):
        _broken("Model._compile_metrics (CompileMetrics)", "the loss landscape's metrics",
                f"the copy is {type(copy).__name__}, not a fresh keras.metrics.Metric")
    copy.build(y, y_pred)
    copy.update_state(y, y_pred, sample_weight=np.array([1.0, 3.0], "float32"))
    result = {name: float(value) for name, value in copy.result().items()}
    expected = {"mae": 1.5, "wmse": (1.0 + 3.0 * 4.0) / 4.0}
    if set(result) != set(expected) or not all(np.isclose(result[k], v, rtol=1e-6) for k, v in expected.items()):
        _broken("CompileMetrics(_user_metrics, _user_weighted_metrics, output_names=...)", "the loss landscape",
                f"the copy computed {result}, expected {expected}")
    uncompiled = _regularized_model()
    assert _keras_compat.compiled_metrics_copy(uncompiled) is None


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
        slots = _keras_compat.optimizer_slots(optimizer, attribute)
        if slots is None:
            _broken(f"keras.optimizers.{type(optimizer).__name__}.{attribute} (it no longer exists)",
                    "optimizer_preconditioner")
        if len(slots) != len(variables):
            _broken(f"{type(optimizer).__name__}.{attribute}", "optimizer_preconditioner",
                    f"{len(slots)} slots for {len(variables)} variables")
        got = slots[_keras_compat.variable_index(optimizer, variables[0])].numpy()
        if not np.allclose(got, values, rtol=1e-5):
            _broken(f"{type(optimizer).__name__}.{attribute}", "optimizer_preconditioner",
                    f"after one step it holds {got}, expected {values}")
