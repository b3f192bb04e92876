"""Caffe's ``solver.prototxt``: protobuf text format read into the fields of a solver setting.

A field means what it means in Caffe: one the file leaves out takes Caffe's default
(``weight_decay`` 0, ``momentum`` 0, ``delta`` 1e-8, ``regularization_type`` "L2", ...), not the
workbench's. A field that would change training is either honoured or the file is refused with
one line naming it; fields that only drive Caffe's own machinery are listed in
``CAFFE_ONLY_FIELDS`` and accepted without effect. ``SolverConfig.from_prototxt``
(:mod:`workbench.training.solver`) is the way in.
"""

from __future__ import annotations

import dataclasses
import re

from workbench._checks import UsageError

# Caffe's solver types, by the ``type`` string (matched case-insensitively) and by the number
# of the deprecated ``solver_type`` enum.
_CAFFE_TYPES = {"sgd": "sgd", "nesterov": "nesterov", "adagrad": "adagrad",
                "rmsprop": "rmsprop", "adadelta": "adadelta", "adam": "adam"}
_SOLVER_TYPE_ENUM = ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")
_CAFFE_POLICIES = {"fixed": "constant", "step": "step", "exp": "exp", "inv": "inv",
                   "multistep": "multistep", "poly": "poly", "sigmoid": "sigmoid"}

# The type of each SolverParameter field in caffe.proto (an enum as its name and values); the
# fields of _REPEATED may be given several times.
_FLOAT, _INT, _STRING, _BOOL, _MESSAGE = "float", "int", "string", "bool", "message"
_TRAINING_FIELDS = {
    "base_lr": _FLOAT, "lr_policy": _STRING, "gamma": _FLOAT, "power": _FLOAT,
    "stepsize": _INT, "stepvalue": _INT, "max_iter": _INT, "iter_size": _INT,
    "momentum": _FLOAT, "momentum2": _FLOAT, "weight_decay": _FLOAT,
    "regularization_type": _STRING, "clip_gradients": _FLOAT, "delta": _FLOAT,
    "rms_decay": _FLOAT, "type": _STRING, "solver_type": ("SolverType", _SOLVER_TYPE_ENUM),
    "test_interval": _INT, "snapshot": _INT, "display": _INT,
}

#: SolverParameter fields that only drive Caffe's own machinery, accepted and ignored, with why
#: they do not change how the workbench trains.
CAFFE_ONLY_FIELDS = {
    "net": "the network is the workbench's backbone and head",
    "net_param": "the network is the workbench's backbone and head",
    "train_net": "the network is the workbench's backbone and head",
    "test_net": "the network is the workbench's backbone and head",
    "train_net_param": "the network is the workbench's backbone and head",
    "test_net_param": "the network is the workbench's backbone and head",
    "train_state": "selects layers of a Caffe network",
    "test_state": "selects layers of a Caffe network",
    "test_iter": "validation covers the whole validation split",
    "test_initialization": "whether Caffe tests before training; the weights are the same",
    "test_compute_loss": "validation always reports the loss",
    "average_loss": "smooths the loss Caffe prints",
    "snapshot_prefix": "checkpoints go to the run directory",
    "snapshot_format": "checkpoints are .keras files",
    "snapshot_diff": "checkpoints are .keras files",
    "snapshot_after_train": "the final model is always saved",
    "solver_mode": "the device is chosen by finetune's precision and strategy",
    "device_id": "the device is chosen by finetune's precision and strategy",
    "layer_wise_reduce": "how Caffe overlaps multi-GPU communication",
    "debug_info": "Caffe's debugging printout",
    "random_seed": "training is always seeded by finetune's seed (Caffe's random numbers "
                   "could not be reproduced anyway)",
}
_CAFFE_ONLY_TYPES = {
    "net": _STRING, "net_param": _MESSAGE, "train_net": _STRING, "test_net": _STRING,
    "train_net_param": _MESSAGE, "test_net_param": _MESSAGE, "train_state": _MESSAGE,
    "test_state": _MESSAGE, "test_iter": _INT, "test_initialization": _BOOL,
    "test_compute_loss": _BOOL, "average_loss": _INT, "snapshot_prefix": _STRING,
    "snapshot_format": ("SnapshotFormat", ("HDF5", "BINARYPROTO")), "snapshot_diff": _BOOL,
    "snapshot_after_train": _BOOL, "solver_mode": ("SolverMode", ("CPU", "GPU")),
    "device_id": _INT, "layer_wise_reduce": _BOOL, "debug_info": _BOOL, "random_seed": _INT,
}
_REPEATED = {"stepvalue", "test_net", "test_net_param", "test_state", "test_iter"}
_REFUSED = {"weights": "the starting weights come from finetune's weights or source "
                       "(workbench train --weights/--source)"}

_TOKENS = re.compile(r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[{}\[\]:;,<>])
  | (?P<word>[^\s{}\[\]:;,<>"'\#]+)
""", re.VERBOSE)
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?[fF]?")
_INT_TEXT = re.compile(r"[-+]?\d+")
_NAME_TEXT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # string, punct or word
    text: str
    line: int


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    line: int
    text: str | None = None  # a scalar as written (strings without their quotes)
    quoted: bool = False
    block: bool = False  # a message in braces (its contents are not needed)


class _Prototxt:
    """Reads protobuf text format into the top-level fields of one message."""

    def __init__(self, text: str, source: str):
        self.source = source
        self.tokens = []
        line, position = 1, 0
        while position < len(text):
            match = _TOKENS.match(text, position)
            if match is None:
                self.fail(line, f"cannot read {text[position:].splitlines()[0]!r}")
            if match.lastgroup == "newline":
                line += 1
            elif match.lastgroup in ("string", "punct", "word"):
                self.tokens.append(_Token(match.lastgroup, match.group(), line))
            position = match.end()
        self.position = 0

    def fail(self, line: int | None, message: str):
        where = self.source if line is None else f"{self.source} line {line}"
        raise UsageError(f"{where}: {message}")

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token | None:
        token = self.peek()
        self.position += token is not None
        return token

    def fields(self, closing: str | None = None, opened: _Token | None = None) -> list[_Field]:
        fields = []
        while True:
            token = self.take()
            if token is None:
                if closing:
                    self.fail(opened.line, f"the block opened here is never closed with "
                                           f"{closing!r}")
                return fields
            if closing and token.text == closing:
                return fields
            if token.kind != "word" or not _NAME_TEXT.fullmatch(token.text):
                self.fail(token.line, f"expected a field name, received: {token.text!r}")
            fields.extend(self.value(token))
            if self.peek() is not None and self.peek().text in (";", ","):
                self.take()

    def value(self, name: _Token) -> list[_Field]:
        colon = self.peek() is not None and self.peek().text == ":"
        if colon:
            self.take()
        token = self.take()
        if token is None:
            self.fail(name.line, f"{name.text} has no value")
        if token.text in ("{", "<"):
            self.fields("}" if token.text == "{" else ">", token)  # contents not needed
            return [_Field(name.text, name.line, block=True)]
        if not colon:
            self.fail(token.line, f"expected ':' after {name.text}, received: {token.text!r}")
        if token.text == "[":
            values = []
            while True:
                item = self.take()
                if item is None or item.kind == "punct":
                    self.fail(name.line, f"{name.text} has a malformed list [...]")
                values.append(self.scalar(name, item))
                after = self.take()
                if after is None or after.text not in (",", "]"):
                    self.fail(name.line, f"{name.text} has a malformed list [...]")
                if after.text == "]":
                    return values
        if token.kind == "punct":
            self.fail(token.line, f"{name.text} has no value before {token.text!r}")
        return [self.scalar(name, token)]

    def scalar(self, name: _Token, token: _Token) -> _Field:
        if token.kind == "word":
            return _Field(name.text, name.line, token.text)
        text = _unquote(token.text)
        while self.peek() is not None and self.peek().kind == "string":  # "a" "b" is "ab"
            text += _unquote(self.take().text)
        return _Field(name.text, name.line, text, quoted=True)


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def _convert(reader: _Prototxt, field: _Field, kind):
    """The value of ``field`` as caffe.proto's type ``kind`` says, or a one-line refusal."""
    if kind == _MESSAGE:
        if not field.block:
            reader.fail(field.line, f"{field.name} must be a {{ ... }} block, received: "
                                    f"{field.text!r}")
        return None
    if field.block:
        reader.fail(field.line, f"{field.name} must be a single value, received a {{ ... }} "
                                f"block")
    text = field.text
    if kind == _FLOAT:
        if field.quoted or not _FLOAT_TEXT.fullmatch(text):
            reader.fail(field.line, f"{field.name} must be a number, received: {text!r}")
        return float(text.rstrip("fF"))
    if kind == _INT:
        if field.quoted or not _INT_TEXT.fullmatch(text):
            reader.fail(field.line, f"{field.name} must be an integer, received: {text!r}")
        return int(text)
    if kind == _BOOL:
        if field.quoted or text not in ("true", "false", "True", "False", "t", "f", "1", "0"):
            reader.fail(field.line, f"{field.name} must be true or false, received: {text!r}")
        return text in ("true", "True", "t", "1")
    if kind == _STRING:
        return text
    enum, names = kind
    if _INT_TEXT.fullmatch(text) and 0 <= int(text) < len(names):
        return names[int(text)]
    if text not in names:
        allowed = ", ".join(names)
        reader.fail(field.line, f"{field.name} must be one of {allowed} (Caffe's {enum}), "
                                f"received: {text!r}")
    return text


def _read_prototxt(text: str, source: str) -> tuple[dict, dict, _Prototxt]:
    """The training fields of a solver.prototxt (``{name: value}``, repeated ones as lists)
    and the line each was given on."""
    if not isinstance(text, str):
        raise UsageError(f"text must be a str, received: {type(text).__name__}")
    reader = _Prototxt(text, source)
    values, lines = {}, {}
    for field in reader.fields():
        if field.name in _REFUSED:
            reader.fail(field.line, f"{field.name} is not supported: {_REFUSED[field.name]}")
        kind = _TRAINING_FIELDS.get(field.name, _CAFFE_ONLY_TYPES.get(field.name))
        if kind is None:
            reader.fail(field.line, f"unknown solver field {field.name!r} (not one of Caffe's "
                                    f"SolverParameter fields the workbench knows)")
        value = _convert(reader, field, kind)
        if field.name in _REPEATED:
            values.setdefault(field.name, []).append(value)
        elif field.name in lines:
            reader.fail(field.line, f"{field.name} is given twice (first on line "
                                    f"{lines[field.name]}); Caffe allows it once")
        else:
            values[field.name] = value
        lines.setdefault(field.name, field.line)
    for name in CAFFE_ONLY_FIELDS:
        values.pop(name, None)
    return values, lines, reader


def config_from_prototxt(cls, text: str, source: str):
    """The solver configuration a Caffe ``solver.prototxt`` describes, with Caffe's meaning.

    What :meth:`workbench.training.solver.SolverConfig.from_prototxt` documents and calls.

    Args:
        cls: the configuration class (``SolverConfig``), called with the fields.
        text: the contents of the file.
        source: the name used in error messages.

    Returns:
        ``cls(**fields)``.

    Raises:
        ValueError: one line naming the file, the line and the field.
    """
    values, lines, reader = _read_prototxt(text, source)

    def fail(name, message):
        reader.fail(lines.get(name), message)

    if "type" in values and "solver_type" in values:
        fail("solver_type", "solver_type (old enum) and type cannot both be given; Caffe "
                            "refuses such a file")
    kind = values.get("type", values.get("solver_type", "SGD"))
    if kind.lower() not in _CAFFE_TYPES:
        fail("type", f"type must be one of SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, "
                     f"received: {kind!r}")
    optimizer = _CAFFE_TYPES[kind.lower()]

    if "lr_policy" not in values:
        fail(None, "lr_policy is missing; Caffe has no default for it (it stops with "
                   "'Unknown learning rate policy'): add lr_policy: \"fixed\"")
    policy = values["lr_policy"]
    if policy not in _CAFFE_POLICIES:
        fail("lr_policy", f"lr_policy must be one of {', '.join(_CAFFE_POLICIES)}, "
                          f"received: {policy!r}")
    if "base_lr" not in values:
        fail(None, "base_lr is missing (Caffe would train with learning rate 0)")

    # Caffe's defaults (caffe.proto) for every field the file leaves out.
    fields = {
        "optimizer": optimizer, "base_lr": values["base_lr"],
        "lr_policy": _CAFFE_POLICIES[policy], "gamma": values.get("gamma", 0.0),
        "power": values.get("power", 0.0), "momentum": values.get("momentum", 0.0),
        "momentum2": values.get("momentum2", 0.999),
        "weight_decay": values.get("weight_decay", 0.0),
        "regularization": values.get("regularization_type", "L2"),
        "delta": values.get("delta", 1e-8), "rms_decay": values.get("rms_decay", 0.99),
        "iter_size": values.get("iter_size", 1),
        "stepvalues": tuple(values.get("stepvalue", ())),
    }
    if fields["regularization"] not in ("L2", "L1"):
        fail("regularization_type", f"regularization_type must be \"L2\" or \"L1\", "
                                    f"received: {fields['regularization']!r}")
    if policy in ("step", "sigmoid") and values.get("stepsize", 0) <= 0:
        fail("stepsize", f"lr_policy {policy!r} needs stepsize > 0 (Caffe checks it), "
                         f"received: {values.get('stepsize', 'no stepsize')}")
    if "stepsize" in values:
        fields["stepsize"] = values["stepsize"]
    if "max_iter" in values:
        fields["max_iter"] = values["max_iter"]
    elif policy == "poly":
        fail(None, "lr_policy 'poly' needs max_iter, where its rate reaches 0")
    if policy == "multistep" and not fields["stepvalues"]:
        fail("lr_policy", "lr_policy 'multistep' needs at least one stepvalue")
    if optimizer in ("adagrad", "rmsprop") and fields["momentum"] != 0:
        fail("momentum", f"momentum must be 0 for type {kind!r} (Caffe checks it), "
                         f"received: {fields['momentum']!r}")
    clip = values.get("clip_gradients", -1.0)
    if clip == 0:
        fail("clip_gradients", "clip_gradients must be > 0 to clip, or < 0 not to (0 would "
                               "zero every gradient), received: 0")
    fields["clip_gradients"] = clip if clip > 0 else None
    # Intervals in iterations; 0 is Caffe's "never", which leaves the workbench's per-epoch
    # default in place (validation and checkpoints do not change the trained weights).
    for caffe_name, name in (("test_interval", "test_interval_iters"),
                             ("snapshot", "snapshot_iters"), ("display", "display_iters")):
        interval = values.get(caffe_name, 0)
        if interval < 0:
            fail(caffe_name, f"{caffe_name} must be >= 0, received: {interval}")
        fields[name] = interval or None
    try:
        return cls(**fields)
    except ValueError as error:  # a value out of range: say where it was given
        problem = str(error)
    field = next((name for name in fields if problem.startswith(name + " ")), None)
    caffe_names = {"regularization": "regularization_type", "stepvalues": "stepvalue",
                   "optimizer": "type"}
    fail(caffe_names.get(field, field), problem)
