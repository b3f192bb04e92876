"""The private parts of Keras, uvicorn, Starlette and JAX the workbench relies on, in one place.

Each function or constant below is one assumption about a library's internals, named for what
it gives the caller, with the version it was checked on; ``tests/test_compat.py`` has a test
for each that fails when a new release breaks it. ``pyproject.toml`` and ``environment.yml``
bound these libraries below their next minor release: run ``tests/test_compat.py`` against a
new release before raising a bound, and fix the function here (not its callers) when a test
fails.

Overrides of private methods cannot move here (an optimizer subclass must define
``_apply_weight_decay`` itself): each has a check function that its class calls before relying
on it.

This module imports no library at its top, so that importing it costs nothing (the prediction
path imports it without Keras): each function imports what it needs, or works on the objects it
is given.
"""

from __future__ import annotations

import copy

KERAS_CHECKED = "3.15.1"
UVICORN_CHECKED = "0.55.0"
STARLETTE_CHECKED = "1.10.0"
JAX_CHECKED = "0.10.2"

# --- Keras: layers and graphs ------------------------------------------------------------------


def flatten_layers(model, *, include_self: bool = True, recursive: bool = True) -> list:
    """Every layer of ``model``, sublayers included (``Layer._flatten_layers``).

    Checked on Keras 3.15.1. Assumes ``_flatten_layers(include_self, recursive)`` lists a layer
    before its sublayers, reaching the layers of nested models and the sublayers a layer keeps
    as attributes (MultiHeadAttention's Dense layers), which ``model.layers`` does not.

    Args:
        model: a Keras layer or model.
        include_self: list ``model`` itself first.
        recursive: also the sublayers of sublayers.

    Returns:
        A list of layers, parents before their sublayers.
    """
    return list(model._flatten_layers(include_self=include_self, recursive=recursive))


def inbound_nodes(layer) -> list:
    """The calls of ``layer`` in functional graphs (``Operation._inbound_nodes``).

    Checked on Keras 3.15.1. Assumes each call of a layer (or nested model) on symbolic tensors
    appends a node to ``layer._inbound_nodes`` whose ``input_tensors`` and ``output_tensors``
    are the tensors it was called on and returned, the very objects of the enclosing graph.

    Returns:
        The nodes, in the order of the calls.
    """
    return list(layer._inbound_nodes)


def producing_operation(tensor):
    """The layer or operation that made the symbolic ``tensor`` (``tensor._keras_history``).

    Checked on Keras 3.15.1. Assumes a ``KerasTensor`` of a functional graph carries
    ``_keras_history`` whose ``operation`` is the layer (or nested model) that returned it.
    """
    return tensor._keras_history.operation


def is_graph_model(model) -> bool:
    """Whether ``model`` is a functional model whose graph :func:`run_through_graph` can walk.

    Checked on Keras 3.15.1. Assumes functional models (``keras.Model(inputs, outputs)``, the
    keras.applications networks) have ``Function._run_through_graph`` and subclassed models
    do not.
    """
    return hasattr(model, "_run_through_graph")


def run_through_graph(model, inputs, operation_fn):
    """Runs ``model``'s graph on ``inputs``, calling ``operation_fn(op)`` in place of each op.

    Checked on Keras 3.15.1. Assumes ``Function._run_through_graph(inputs, operation_fn)``
    visits the graph's operations in order, calling ``operation_fn(op)(*args, **kwargs)`` for
    each with the values of its inputs, as ``Model.call`` does with ``operation_fn=lambda op:
    op``; nested models are single operations.

    Args:
        model: a functional model (:func:`is_graph_model`).
        inputs: the input tensors.
        operation_fn: returns what to call in place of an operation.

    Returns:
        The outputs, structured as the model's.
    """
    return model._run_through_graph(inputs, operation_fn=operation_fn)


# --- Keras: optimizers -------------------------------------------------------------------------


def variable_index(optimizer, variable) -> int:
    """The position of ``variable`` among those ``optimizer`` was built with
    (``BaseOptimizer._get_variable_index``).

    Checked on Keras 3.15.1. Assumes the index is the variable's position in the list given to
    ``build`` (the order of the optimizer's slot lists), and that it is found from the
    variable ``update_step`` receives, which on TensorFlow may be the underlying or distributed
    variable rather than the Keras one.
    """
    return optimizer._get_variable_index(variable)


def uses_weight_decay(optimizer, variable) -> bool:
    """Whether Keras would decay ``variable`` (``BaseOptimizer._use_weight_decay``).

    Checked on Keras 3.15.1. Assumes it is False for the variables named by
    ``optimizer.exclude_from_weight_decay(var_list=..., var_names=...)`` and True otherwise.
    """
    return bool(optimizer._use_weight_decay(variable))


def rmsprop_slots(optimizer, variable) -> tuple:
    """RMSprop's mean square of ``variable``'s gradient and its momentum (None without).

    Checked on Keras 3.15.1. Assumes ``keras.optimizers.RMSprop`` keeps the running mean
    squares in ``_velocities`` and, with ``momentum > 0``, the momenta in ``_momentums``, both
    indexed as :func:`variable_index`.
    """
    index = variable_index(optimizer, variable)
    momentum = optimizer._momentums[index] if optimizer.momentum > 0 else None
    return optimizer._velocities[index], momentum


def adagrad_accumulator(optimizer, variable):
    """AdaGrad's sum of ``variable``'s squared gradients.

    Checked on Keras 3.15.1. Assumes ``keras.optimizers.Adagrad`` keeps the sums in
    ``_accumulators``, indexed as :func:`variable_index`, starting at its
    ``initial_accumulator_value``.
    """
    return optimizer._accumulators[variable_index(optimizer, variable)]


def check_weight_decay_hook(optimizer_class: type) -> None:
    """Checks that overriding ``_apply_weight_decay`` still replaces Keras's weight decay.

    Checked on Keras 3.15.1. Assumes every step calls ``self._apply_weight_decay(variables)``
    once before the update steps (``BaseOptimizer.apply``, and the JAX backend's stateless
    apply), and that it is the only place Keras decays weights: an optimizer that decays in
    ``update_step`` overrides it to do nothing. The Keras classes above ``optimizer_class``
    must define it as ``_apply_weight_decay(self, variables)``; were it renamed, Keras's decay
    would silently be applied on top of the override's own.

    Raises:
        RuntimeError: when no Keras class of ``optimizer_class`` defines it, or one defines it
            with other parameters.
    """
    import inspect

    found = [klass for klass in optimizer_class.__mro__[1:]
             if klass.__module__.startswith("keras.") and "_apply_weight_decay" in vars(klass)]
    for klass in found:
        parameters = list(inspect.signature(vars(klass)["_apply_weight_decay"]).parameters)
        if parameters != ["self", "variables"]:
            found = []
            break
    if not found:
        raise RuntimeError(f"{optimizer_class.__name__} overrides Keras's _apply_weight_decay"
                           f"(self, variables), which this Keras (checked up to "
                           f"{KERAS_CHECKED}) no longer has: see workbench/_compat.py")


# --- Keras: random layers ----------------------------------------------------------------------

SEED_STATE_NAME = "seed_generator_state"


def is_seed_state(variable) -> bool:
    """Whether ``variable`` is the state of a seed generator (of a random layer).

    Checked on Keras 3.15.1. Assumes a ``keras.random.SeedGenerator`` (Dropout's, a random
    augmentation layer's) keeps its state in a variable of the model whose path ends in
    ``SEED_STATE_NAME``, of shape ``(2,)`` (``[seed, counter]``) and assignable, and that
    Keras does not save it with the model.
    """
    return variable.path.endswith(SEED_STATE_NAME)


# --- Keras: ONNX export ------------------------------------------------------------------------


def tf2onnx_on_numpy2():
    """``tf2onnx``, made to run on NumPy 2 the way Keras's own ONNX export does it first.

    Checked on Keras 3.15.1 (tf2onnx 1.17.0). Assumes ``keras.src.export.tf2onnx_lib`` has
    ``patch_tf2onnx()``, callable any number of times (it is cached), which replaces the two
    parts of tf2onnx that use names NumPy 2 removed (``np.cast`` in the constant folding,
    ``np.object``); tf2onnx's public ``tf2onnx.convert.from_function`` then converts a
    ``tf.function``.
    """
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    patch_tf2onnx()
    return tf2onnx


# --- JAX ---------------------------------------------------------------------------------------

#: The logger of JAX's platform start-up ("An NVIDIA GPU may be present on this machine, but a
#: CUDA-enabled jaxlib is not installed"). Checked on JAX 0.10.2. Only the quiet start relies on
#: it: were it renamed, those lines would show again and nothing else changes, so JAX has no
#: upper bound for it.
JAX_PLATFORM_LOGGER = "jax._src.xla_bridge"

# --- uvicorn -----------------------------------------------------------------------------------


def http_protocol_class() -> type:
    """uvicorn's HTTP protocol class, to subclass (``uvicorn.protocols.http.auto``).

    Checked on uvicorn 0.55.0 (h11 and httptools). Assumes ``AutoHTTPProtocol`` is the class
    ``uvicorn.Config(http="auto")`` uses; that its instances have ``connections`` (the set of
    open connections the server shares), ``loop``, ``transport``, ``client`` (address or None)
    and ``cycle`` (None until request headers arrive; then with ``more_body``, True while the
    body is arriving, and ``response_started``); and that ``connection_made(transport)``,
    ``connection_lost(exc)`` and ``shutdown()`` may be overridden calling the originals.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def uvicorn_logging_config() -> dict:
    """A copy of uvicorn's logging configuration, to add loggers to.

    Checked on uvicorn 0.55.0. Assumes ``uvicorn.config.LOGGING_CONFIG`` is a
    ``logging.config.dictConfig`` dictionary with a handler named ``"default"`` writing to
    stderr.
    """
    from uvicorn.config import LOGGING_CONFIG

    return copy.deepcopy(LOGGING_CONFIG)


# --- Starlette ---------------------------------------------------------------------------------


class MultipartError(ValueError):
    """A multipart body Starlette's parser refuses (malformed, too many files or fields)."""


async def parse_multipart(headers, stream, *, max_files: int, max_fields: int):
    """The form of a ``multipart/form-data`` body read from ``stream``.

    Checked on Starlette 1.10.0 (python-multipart 0.0.34). Assumes
    ``starlette.formparsers.MultiPartParser(headers, stream, max_files=, max_fields=)`` reads
    the body from any async iterator of byte chunks (so the caller can limit its size and
    time), that ``parse()`` returns a ``FormData`` of ``UploadFile`` and ``str`` values, and
    that a refused body raises ``MultiPartException`` with a ``message``.

    Args:
        headers: the request's headers (with its ``content-type`` and boundary).
        stream: an async iterator of the body's chunks.
        max_files: the most file fields accepted.
        max_fields: the most text fields accepted.

    Returns:
        A ``starlette.datastructures.FormData``; close it when done.

    Raises:
        MultipartError: with Starlette's message, for a body it refuses.
    """
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(headers, stream, max_files=max_files, max_fields=max_fields)
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise MultipartError(error.message) from error
