"""An effect is a unit (issue 22): a toy effect written in this file alone (its pass, its twin, its
strip hook and its registry entry) flows through the config's key check, the transform, strip and
the trainer's twin, and the effects placed after it still find the layer's constant weight."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import as_ir, gemm_relu

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from analog_onnx import effects  # noqa: E402
from analog_onnx.config import AnalogConfig, load_preset  # noqa: E402
from analog_onnx.errors import ConfigError  # noqa: E402
from analog_onnx.passes.common import ROLE_KEY, EffectPass, tag  # noqa: E402
from analog_onnx.passes.names import Names  # noqa: E402
from analog_onnx.passes.quantize_weights import wrap_weight  # noqa: E402
from analog_onnx.passes.sites import find_sites  # noqa: E402
from analog_onnx.runtime import make_session  # noqa: E402
from analog_onnx.train.attach import NoiseLevel  # noqa: E402
from analog_onnx.train.export import to_onnx  # noqa: E402
from analog_onnx.train.hardware import Hardware, TwinSite, attach_hardware  # noqa: E402
from analog_onnx.transform import read_analog_metadata, strip_model, transform_model  # noqa: E402

ROLE = "toy_gain"
RESTORED: list[list[str]] = []  # the toy nodes strip showed the toy's hook


def gain(config: AnalogConfig) -> float:
    """The toy's physics: every analog weight is multiplied by 1 + noise.multiplicative."""
    return 1.0 + config.noise.multiplicative


class ToyGainPass(EffectPass):
    """Toy rule: each analog layer's weight goes through ``Mul`` by a tagged ``Constant`` gain."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        sites = [s for s in find_sites(model.graph, self.config, self.only) if s.weight is not None]
        names = Names(model)
        for site in sites:
            factor = np.array(gain(self.config), np.float32)
            constant = tag(ir.node("Constant", [], {"value": ir.tensor(factor, name=names.value("toy"))},
                                   name=names.node(f"{site.name}/toy_gain_value")), ROLE)
            model.graph.insert_before(site.node, constant)
            name = names.node(f"{site.name}/toy_gain")
            wrap_weight(model.graph, site, names, None, "g", lambda source, factor=constant.outputs[0], name=name:
                        tag(ir.node("Mul", [source, factor], name=name), ROLE))
        return ir.passes.PassResult(model, modified=bool(sites))


def restore_toy(graph: ir.Graph, inserted: list[ir.Node]) -> None:
    RESTORED.append([n.op_type for n in inserted if n.metadata_props.get(ROLE_KEY) == ROLE])


class ToyGainStep:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, weight: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        return weight * self.factor


def attach_toy(hardware: Hardware, sites: list[TwinSite]) -> None:
    for site in sites:
        hardware.periphery(site).weight_steps.append(ToyGainStep(gain(hardware.config)))


TOY = effects.Effect("toy_gain", "mvm", ("noise.multiplicative",), lambda c: c.noise.multiplicative > 0,
                     f"{__name__}:ToyGainPass", f"{__name__}:attach_toy", weight_roles=(ROLE,),
                     restore=f"{__name__}:restore_toy")
# an exact product: no DAC or ADC grid, the output noise only (silent at noise_scale 0)
OVERRIDES = ["inp_bits=0", "out_bits=0", "out_bound=0", "bound_management=none", "noise.multiplicative=0.5"]


@pytest.fixture
def toy(monkeypatch):
    """The registry with the toy after weight quantization, before the tile and the periphery."""
    monkeypatch.setattr(effects, "EFFECTS", (*effects.EFFECTS[:2], TOY, *effects.EFFECTS[2:]))
    RESTORED.clear()


def test_a_key_only_the_toy_reads_is_refused_without_it_and_read_with_it(monkeypatch):
    with pytest.raises(ConfigError, match="noise.multiplicative has no effect under placement.where = 'mvm'"):
        load_preset("aihwkit-default").with_overrides(OVERRIDES)
    monkeypatch.setattr(effects, "EFFECTS", (*effects.EFFECTS, TOY))
    config = load_preset("aihwkit-default").with_overrides(OVERRIDES)
    assert [e.name for e in effects.enabled_effects(config)] == ["analog_tile", "mvm_periphery", "toy_gain"]
    assert ROLE in effects.weight_roles()


def test_the_toy_flows_through_transform_and_strip(toy):
    config = load_preset("aihwkit-default").with_overrides(OVERRIDES)
    model = gemm_relu()
    transformed = transform_model(model, config)
    by_name = {n.name: n for n in transformed.graph.node}
    assert by_name["gemm/toy_gain"].op_type == "Mul" and "gemm/analog_tile" in by_name  # the tile still saw W
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    weights = {t.name: np.frombuffer(t.raw_data, np.float32) for t in model.graph.initializer}
    expected = np.maximum(x @ (1.5 * weights["W"].reshape(3, 4)).T + weights["b"], 0)
    meta = read_analog_metadata(transformed)
    session = make_session(transformed.SerializeToString(), native=False)
    y = session.run(None, {"x": x, meta.noise_scale_input: np.array(0.0, np.float32)})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    stripped = strip_model(transformed)
    assert RESTORED == [["Constant", "Mul"]]
    assert stripped.SerializeToString() == ir.serde.serialize_model(as_ir(model)).SerializeToString()


def test_the_toy_twin_computes_what_the_transformed_model_computes(toy):
    config = load_preset("aihwkit-default").with_overrides(OVERRIDES)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    transformed = transform_model(to_onnx(model, (4,)).model, config)
    hardware = attach_hardware(model, config, (4,))
    layer = model.get_submodule("0")
    assert [type(s).__name__ for s in layer.analog_twin.hardware.weight_steps] == ["ToyGainStep"]
    x = torch.randn(5, 4)
    with torch.no_grad(), hardware.setting(scale=0.0):
        twin = model(x).numpy()
        expected = torch.relu(nn.functional.linear(x, 1.5 * layer.weight, layer.bias)).numpy()
    meta = read_analog_metadata(transformed)
    session = make_session(transformed.SerializeToString(), native=False)
    y = session.run(None, {session.get_inputs()[0].name: x.numpy(), meta.noise_scale_input: np.array(0.0, np.float32)})
    np.testing.assert_allclose(twin, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[0], twin, rtol=1e-5, atol=1e-5)
