"""The device-specific parts of DeviceWeights' function body, traced from the Python device classes.

A device's physics is written once, as formulas on arrays (``devices/``). Run on numpy arrays they
are the reference, on torch tensors the twin; run here on ``Traced`` values, each Python operation
appends the ONNX node that computes it, in the same order, so the function body is the formula
itself. Python numbers stay constants (float32, as numpy takes them); a device's parameters (the
fields a config sets) are references to the DeviceWeights attributes of the same name.

For every registered device model one trace per step gives three helper functions, each choosing
the device's result by the index ``DeviceIndex`` finds for the ``device`` attribute, and each
taking every device parameter as an attribute (``DEVICE_PARAMETERS``: DeviceWeights passes them
all, so a new device model without new config keys changes nothing there):

- ``DeviceProgrammingSigma(G_target, noise_scale, index)``: ``programming_sigma``;
- ``DeviceDrift(G_target, G_prog, z, t_inference, noise_scale, index)``: ``drift``;
- ``DeviceReadSigma(G_prog, G_now, t_inference, noise_scale, index)``: ``read_noise_sigma``;

and an unknown name gives NaN (the native kernel refuses it by name).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import AttributeProto
from onnx import helper as h

from analog_onnx.devices.base import DeviceModel
from analog_onnx.devices.config import CONFIG_KEYS, DEVICE_PARAMETERS
from analog_onnx.devices.registry import DEVICE_CLASSES, parameters

Number = float | int


class Body:
    """The nodes of one function body being traced."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def name(self) -> str:
        return f"v{len(self.nodes)}"

    def node(self, op_type: str, *inputs: Traced | Number, **attributes: object) -> Traced:
        names = [self.value(x).name for x in inputs]
        out = self.name()
        self.nodes.append(h.make_node(op_type, names, [out], **attributes))
        return Traced(self, out)

    def value(self, x: Traced | Number) -> Traced:
        """``x`` as a value of the body (a Python number becomes a float32 constant)."""
        return x if isinstance(x, Traced) else self.node("Constant", value_float=float(x))

    def attribute(self, name: str, kind: int = AttributeProto.FLOAT) -> Traced:
        """A Constant holding the caller's attribute ``name`` (a float, or a ``kind`` scalar)."""
        field = {AttributeProto.FLOAT: "value_float", AttributeProto.STRING: "value_string"}[kind]
        reference = AttributeProto(name=field, type=kind, ref_attr_name=name)
        out = self.name()
        node = h.make_node("Constant", [], [out])
        node.attribute.append(reference)
        self.nodes.append(node)
        return Traced(self, out)

    def function(self, name: str, domain: str, inputs: list[str], output: Traced, attributes: tuple[str, ...],
                 doc: str) -> onnx.FunctionProto:
        """The function returning ``output``, without the nodes it does not need."""
        needed, wanted = [], {output.name}
        for node in reversed(self.nodes):
            if wanted & set(node.output):
                needed.append(node)
                wanted |= set(node.input)
        return h.make_function(domain, name, inputs, [output.name], list(reversed(needed)),
                               [h.make_opsetid("", 13)], attributes=list(attributes), doc_string=doc)


class Traced:
    """A value of a function body being traced: arithmetic on it appends the node computing it.

    It has the operators and methods the device formulas use on arrays (``devices/arrays.py``);
    it has no truth value, so a formula that branches on one fails instead of tracing one branch.
    """

    def __init__(self, body: Body, name: str) -> None:
        self.body, self.name = body, name

    def __add__(self, other: Traced | Number) -> Traced:
        return self.body.node("Add", self, other)

    def __radd__(self, other: Number) -> Traced:
        return self.body.node("Add", other, self)

    def __sub__(self, other: Traced | Number) -> Traced:
        return self.body.node("Sub", self, other)

    def __rsub__(self, other: Number) -> Traced:
        return self.body.node("Sub", other, self)

    def __mul__(self, other: Traced | Number) -> Traced:
        return self.body.node("Mul", self, other)

    def __rmul__(self, other: Number) -> Traced:
        return self.body.node("Mul", other, self)

    def __truediv__(self, other: Traced | Number) -> Traced:
        return self.body.node("Div", self, other)

    def __rtruediv__(self, other: Number) -> Traced:
        return self.body.node("Div", other, self)

    def __pow__(self, other: Traced | Number) -> Traced:
        return self.body.node("Pow", self, other)

    def __rpow__(self, other: Number) -> Traced:
        return self.body.node("Pow", other, self)

    def __neg__(self) -> Traced:
        return self.body.node("Neg", self)

    def __abs__(self) -> Traced:
        return self.body.node("Abs", self)

    def __lt__(self, other: Traced | Number) -> Traced:
        return self.body.node("Less", self, other)

    def __le__(self, other: Traced | Number) -> Traced:
        return self.body.node("LessOrEqual", self, other)

    def __gt__(self, other: Traced | Number) -> Traced:
        return self.body.node("Greater", self, other)

    def __ge__(self, other: Traced | Number) -> Traced:
        return self.body.node("GreaterOrEqual", self, other)

    def __bool__(self) -> bool:
        raise TypeError("a traced device formula branched on a value: select with devices.arrays.where")

    def clip(self, min: Number | None = None, max: Number | None = None) -> Traced:  # noqa: A002 (numpy's names)
        """As the hand-written bodies wrote it: ``Relu`` for a floor of 0, ``Max``/``Min`` for one
        end, ``Clip`` for both."""
        if max is None:
            return self.body.node("Relu", self) if min == 0 else self.body.node("Max", self, min)
        if min is None:
            return self.body.node("Min", self, max)
        return self.body.node("Clip", self, min, max)

    def log(self) -> Traced:
        return self.body.node("Log", self)

    def sqrt(self) -> Traced:
        return self.body.node("Sqrt", self)

    def select(self, a: Traced | Number, b: Traced | Number) -> Traced:
        """``a`` where this boolean value holds, else ``b``."""
        return self.body.node("Where", self, a, b)


STEPS: dict[str, tuple[str, tuple[str, ...]]] = {  # function -> (the DeviceModel method, its array inputs)
    "DeviceProgrammingSigma": ("programming_sigma", ("G_target",)),
    "DeviceDrift": ("drift", ("G_target", "G_prog", "z", "t_inference")),
    "DeviceReadSigma": ("read_noise_sigma", ("G_prog", "G_now", "t_inference")),
}


def _traced_device(body: Body, cls: type[DeviceModel], noise_scale: Traced) -> DeviceModel:
    """A device of ``cls`` whose parameters are the caller's attributes, scaled by ``noise_scale``."""
    return cls(**{key: body.attribute(key) for key in parameters(cls, CONFIG_KEYS)}).scaled(noise_scale)


def step_function(name: str, domain: str, devices: dict[str, type[DeviceModel]]) -> onnx.FunctionProto:
    """One step of every device model, the one ``index`` says chosen by a chain of Where."""
    method, inputs = STEPS[name]
    body = Body()
    values = [Traced(body, i) for i in inputs]
    noise_scale, index = Traced(body, "noise_scale"), Traced(body, "index")
    result = body.value(math.nan)
    for position, cls in reversed(list(enumerate(devices.values()))):
        traced = getattr(_traced_device(body, cls, noise_scale), method)(*values)
        chosen = body.node("Equal", index, body.node("Constant", value_int=position))
        result = chosen.select(traced, result)
    return body.function(name, domain, [*inputs, "noise_scale", "index"], result, DEVICE_PARAMETERS,
                         f"DeviceModel.{method} of the device model at `index`, traced from devices/")


def index_function(domain: str, devices: dict[str, type[DeviceModel]]) -> onnx.FunctionProto:
    """``DeviceIndex(device)``: the position of the name in the registry (its count when unknown).

    (Equal compares strings only from opset 19, so Unique finds it: in first-seen order, the
    ``device`` after the known names gets the index of its first occurrence.)"""
    body = Body()
    names = onnx.numpy_helper.from_array(np.array(list(devices), dtype=object), "names")
    known = body.node("Constant", value=names)
    this = body.node("Unsqueeze", body.attribute("device", AttributeProto.STRING),
                     body.node("Constant", value_ints=[0]))
    together = body.node("Concat", known, this, axis=0)
    outputs = [body.name() + suffix for suffix in ("_unique", "_first", "_inverse", "_counts")]
    body.nodes.append(h.make_node("Unique", [together.name], outputs, sorted=0))
    index = body.node("Gather", Traced(body, outputs[2]), body.node("Constant", value_int=len(devices)))
    return body.function("DeviceIndex", domain, [], index, ("device",), "the registry position of the device attribute")


def device_functions(domain: str, devices: dict[str, type[DeviceModel]] = DEVICE_CLASSES) -> list[onnx.FunctionProto]:
    """``DeviceIndex`` and the three step functions, for every device model of ``devices`` (the registry)."""
    return [index_function(domain, devices), *(step_function(name, domain, devices) for name in STEPS)]
