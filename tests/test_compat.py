"""One test per assumption of workbench/_compat.py about Keras, uvicorn, Starlette and JAX.

Run this file against a new release of those libraries before raising their upper bounds in
pyproject.toml and environment.yml: a failure names the assumption the release broke, and the
function of ``_compat`` to fix. ``test_jax_backend.py`` runs it again on Keras's JAX backend.
"""

import asyncio
import importlib.metadata
import tomllib
from pathlib import Path

import keras
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from workbench import _compat
from workbench.training.lr_mult import LRMultiplierSGD
from workbench.training.solver import CaffeRMSprop

ROOT = Path(__file__).resolve().parent.parent


# The private names _compat wraps: no other module of the package may reach them itself
PRIVATE_NAMES = ("._flatten_layers", "._inbound_nodes", "._keras_history", "._run_through_graph",
                 "._get_variable_index", "._use_weight_decay", "seed_generator_state",
                 "uvicorn.protocols", "uvicorn.config", "starlette.formparsers")


def test_only_compat_reaches_the_private_names():
    offenders = [f"{path.relative_to(ROOT)}: {name}"
                 for path in sorted((ROOT / "workbench").rglob("*.py"))
                 if path.name != "_compat.py"
                 for name in PRIVATE_NAMES if name in path.read_text(encoding="utf-8")]
    assert offenders == []


# --- Keras: layers and graphs ------------------------------------------------------------------

def _nested_model():
    """A functional model calling a nested model and a MultiHeadAttention layer."""
    inner = keras.Sequential([keras.Input((3, 4)), keras.layers.Dense(4, name="inner_dense")],
                             name="inner")
    inputs = keras.Input((3, 4), name="image")
    features = inner(inputs)
    attended = keras.layers.MultiHeadAttention(1, 2, name="attention")(features, features)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(attended))
    return keras.Model(inputs, outputs, name="outer"), inner, inputs, features


def test_flatten_layers_reaches_nested_models_and_sublayers_parents_first():
    model, inner, _, _ = _nested_model()
    found = _compat.flatten_layers(model)
    names = [layer.name for layer in found]
    assert found[0] is model
    assert "inner_dense" in names and names.index("inner") < names.index("inner_dense")
    attention = names.index("attention")  # its Dense layers are attributes, not model.layers
    owned = [layer for layer in found[attention + 1:]
             if isinstance(layer, keras.layers.EinsumDense)]
    assert len(owned) >= 3  # query, key, value (and output) projections
    assert model not in _compat.flatten_layers(model, include_self=False)
    assert "inner_dense" not in [layer.name for layer in
                                 _compat.flatten_layers(model, recursive=False)]


def test_inbound_nodes_hold_the_very_tensors_of_each_call():
    model, inner, inputs, features = _nested_model()
    nodes = _compat.inbound_nodes(inner)
    calls = [node for node in nodes
             if len(node.input_tensors) == 1 and node.input_tensors[0] is inputs]
    assert len(calls) == 1 and calls[0].output_tensors[0] is features


def test_producing_operation_is_the_layer_that_returned_the_tensor():
    model, inner, _, features = _nested_model()
    assert _compat.producing_operation(model.outputs[0]) is model.get_layer("head")
    assert _compat.producing_operation(features) is inner


def test_run_through_graph_calls_each_operation_through_operation_fn():
    model, inner, _, _ = _nested_model()
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    visited = []

    def operation_fn(op):
        def call(*args, **kwargs):
            visited.append(op.name)
            return op(*args, **kwargs)
        return call

    assert _compat.is_graph_model(model)
    out = _compat.run_through_graph(model, x, operation_fn)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    assert visited[0] == "inner" and visited[-1] == "head"  # a nested model is one operation
    assert "attention" in visited and "inner_dense" not in visited

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not _compat.is_graph_model(Subclassed())


# --- Keras: optimizers -------------------------------------------------------------------------

def _variables():
    return [keras.Variable(np.full(shape, 1.0, "float32"), name=name)
            for shape, name in (((2, 3), "kernel"), ((3,), "bias"), ((4,), "other"))]


def test_variable_index_is_the_position_given_to_build_also_inside_update_step():
    seen = []

    class Recording(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            seen.append((_compat.variable_index(self, variable), tuple(variable.shape)))
            super().update_step(gradient, variable, learning_rate)

    variables = _variables()
    optimizer = Recording(learning_rate=0.1)
    optimizer.build(variables)
    assert [_compat.variable_index(optimizer, v) for v in variables] == [0, 1, 2]
    optimizer.apply_gradients([(keras.ops.ones(v.shape), v) for v in variables])
    assert sorted(seen) == [(i, tuple(v.shape)) for i, v in enumerate(variables)]


def test_uses_weight_decay_honours_keras_exclusions():
    variables = _variables()
    optimizer = keras.optimizers.AdamW(weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build(variables)
    assert [_compat.uses_weight_decay(optimizer, v) for v in variables] == [True, False, True]


def test_rmsprop_slots_are_its_mean_squares_and_momenta():
    variables = _variables()
    gradients = [keras.ops.full(v.shape, 2.0) for v in variables]
    optimizer = keras.optimizers.RMSprop(learning_rate=0.1, rho=0.75, momentum=0.5)
    optimizer.apply_gradients(zip(gradients, variables))
    for variable in variables:
        mean_square, momentum = _compat.rmsprop_slots(optimizer, variable)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(mean_square), 0.25 * 4.0)
        assert tuple(momentum.shape) == tuple(variable.shape)
        assert float(keras.ops.max(keras.ops.abs(momentum))) > 0  # the step went in
    plain = keras.optimizers.RMSprop(learning_rate=0.1)
    plain.build(variables)
    assert _compat.rmsprop_slots(plain, variables[0])[1] is None


def test_adagrad_accumulator_is_the_sum_of_squared_gradients():
    variables = _variables()
    optimizer = keras.optimizers.Adagrad(learning_rate=0.1, initial_accumulator_value=0.0)
    for _ in range(2):
        optimizer.apply_gradients([(keras.ops.full(v.shape, 3.0), v) for v in variables])
    for variable in variables:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(_compat.adagrad_accumulator(optimizer, variable)), 18.0)


def test_overriding_apply_weight_decay_replaces_all_of_keras_decay():
    calls = []

    class NoGlobalDecay(keras.optimizers.SGD):
        def _apply_weight_decay(self, variables):
            calls.append(len(variables))

    _compat.check_weight_decay_hook(NoGlobalDecay)
    for ours in (LRMultiplierSGD, CaffeRMSprop):  # what the workbench's optimizers override
        _compat.check_weight_decay_hook(ours)
    variables = _variables()
    zero = [(keras.ops.zeros(v.shape), v) for v in variables]
    NoGlobalDecay(learning_rate=0.5, weight_decay=0.5).apply_gradients(zero)
    assert calls == [3]  # called once per step, with every variable
    assert all(np.all(keras.ops.convert_to_numpy(v) == 1.0) for v in variables)  # no decay
    keras.optimizers.SGD(learning_rate=0.5, weight_decay=0.5).apply_gradients(zero)
    assert all(np.all(keras.ops.convert_to_numpy(v) < 1.0) for v in variables)  # Keras decays

    class NotKeras:
        pass

    with pytest.raises(RuntimeError, match="_apply_weight_decay"):
        _compat.check_weight_decay_hook(NotKeras)


# --- Keras: random layers ----------------------------------------------------------------------

def test_seed_state_is_a_two_number_variable_that_decides_the_random_draws():
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5, seed=1)(inputs))
    states = [v for v in model.variables if _compat.is_seed_state(v)]
    assert len(states) == 1 and tuple(states[0].shape) == (2,)
    x = np.ones((4, 64), "float32")

    def mask(seed):
        states[0].assign(np.array([seed, 0], dtype=states[0].dtype))
        return keras.ops.convert_to_numpy(model(x, training=True)) == 0

    assert np.array_equal(mask(7), mask(7)) and not np.array_equal(mask(7), mask(8))
    saved = {v.path for v in model.layers[-1].weights}  # what a .keras file keeps
    assert not any(path.endswith(_compat.SEED_STATE_NAME) for path in saved)


# --- Keras: ONNX export ------------------------------------------------------------------------

def test_tf2onnx_converts_a_tf_function_on_numpy_2(tmp_path):
    tf = pytest.importorskip("tensorflow")
    onnxruntime = pytest.importorskip("onnxruntime")
    tf2onnx = _compat.tf2onnx_on_numpy2()
    assert _compat.tf2onnx_on_numpy2() is tf2onnx  # again: no second patch
    # Keras's versions of the two parts that used names NumPy 2 removed (np.cast, np.object)
    assert tf2onnx.tfonnx.rewrite_constant_fold.__module__ == "keras.src.export.tf2onnx_lib"
    assert tf2onnx.graph.Node.get_value_attr.__module__ == "keras.src.export.tf2onnx_lib"
    weights = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2))
    scores = tf.function(lambda x: tf.nn.softmax(tf.matmul(x, weights)),
                         input_signature=[tf.TensorSpec((None, 3), tf.float32, "inputs")])
    tf2onnx.convert.from_function(scores, scores.input_signature,
                                  output_path=str(tmp_path / "m.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = np.array([[1, 0, 0], [0, 1, 2]], np.float32)
    np.testing.assert_allclose(session.run(None, {"inputs": x})[0], scores(x).numpy(), rtol=1e-6)


# --- JAX ---------------------------------------------------------------------------------------

def test_jax_platform_logger_is_the_one_jax_logs_its_platform_start_on():
    pytest.importorskip("jax")
    from jax._src import xla_bridge

    assert xla_bridge.logger.name == _compat.JAX_PLATFORM_LOGGER


# --- uvicorn -----------------------------------------------------------------------------------

class _Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written, self.closed = b"", False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000),
                "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def test_uvicorn_http_protocol_has_what_the_guarded_protocol_uses():
    import uvicorn
    from uvicorn.server import ServerState

    protocol_class = _compat.http_protocol_class()

    async def drive():
        answered = asyncio.Event()

        async def app(scope, receive, send):
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            answered.set()

        config = uvicorn.Config(app, http="auto", log_config=None, lifespan="off")
        config.load()
        assert config.http_protocol_class is protocol_class
        state = ServerState()
        protocol = protocol_class(config=config, server_state=state, app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        assert protocol.connections is state.connections and protocol in state.connections
        assert protocol.loop is asyncio.get_running_loop() and protocol.transport is transport
        assert protocol.client == ("127.0.0.1", 5000) and protocol.cycle is None
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        cycle = protocol.cycle
        assert cycle.more_body and not cycle.response_started  # the body is still arriving
        protocol.data_received(b"cd")
        await asyncio.wait_for(answered.wait(), 5)
        assert not cycle.more_body and cycle.response_started
        assert b"\r\nabcd\r\n" in transport.written
        protocol.shutdown()
        protocol.connection_lost(None)
        assert protocol not in state.connections

    asyncio.run(drive())


def test_uvicorn_logging_config_is_a_copy_with_a_default_stderr_handler():
    from uvicorn.config import LOGGING_CONFIG

    config = _compat.uvicorn_logging_config()
    assert config == LOGGING_CONFIG and config is not LOGGING_CONFIG
    assert config["handlers"]["default"]["stream"] == "ext://sys.stderr"
    config["loggers"]["added"] = {}
    assert "added" not in LOGGING_CONFIG["loggers"]  # a deep copy


# --- Starlette ---------------------------------------------------------------------------------

def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (f"--b0undary\r\nContent-Disposition: {disposition}\r\n\r\n").encode() + value + \
        b"\r\n"


def test_starlette_parses_multipart_from_any_chunk_stream_and_refuses_too_much():
    from starlette.datastructures import Headers, UploadFile

    headers = Headers({"content-type": "multipart/form-data; boundary=b0undary"})
    body = _part("file", b"\x89PNG data", "a.png") + _part("top_k", b"3") + b"--b0undary--\r\n"

    async def chunks(data, fail=None):  # in small pieces, as a network delivers them
        for start in range(0, len(data), 7):
            if fail is not None and start > 20:
                raise fail
            yield data[start:start + 7]

    async def parse(data, fail=None, **limits):
        limits = {"max_files": 1, "max_fields": 8, **limits}
        form = await _compat.parse_multipart(headers, chunks(data, fail), **limits)
        try:
            upload = form.get("file")
            assert isinstance(upload, UploadFile)
            return await upload.read(), form.get("top_k")
        finally:
            await form.close()

    assert asyncio.run(parse(body)) == (b"\x89PNG data", "3")
    with pytest.raises(_compat.MultipartError, match="Too many files"):
        asyncio.run(parse(_part("other", b"x", "b.png") + body))
    with pytest.raises(_compat.MultipartError, match="Too many fields"):
        asyncio.run(parse(body, max_fields=0))

    class TooLarge(Exception):
        pass

    with pytest.raises(TooLarge):  # the caller's limits on the stream reach it unchanged
        asyncio.run(parse(body, fail=TooLarge()))


# --- the bounds --------------------------------------------------------------------------------

@pytest.mark.parametrize("package, checked", [("keras", _compat.KERAS_CHECKED),
                                              ("uvicorn", _compat.UVICORN_CHECKED),
                                              ("starlette", _compat.STARLETTE_CHECKED)])
def test_dependencies_are_bounded_below_the_next_release_not_checked(package, checked):
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    specifier = next(Requirement(line).specifier for line in dependencies
                     if Requirement(line).name == package)
    version = Version(checked)
    assert specifier.contains(checked)
    assert not specifier.contains(f"{version.major}.{version.minor + 1}.0"), \
        f"{package}'s bound admits a release that tests/test_compat.py was not run against"
    installed = importlib.metadata.version(package)
    assert specifier.contains(installed), f"{package} {installed} is installed: run this file " \
        f"against it, then raise the bound and _compat's checked version"
