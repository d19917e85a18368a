"""The trainer's noise enters where ``transform`` puts it: same sites, same order, same statistics."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from analog_onnx.config import load_preset  # noqa: E402
from analog_onnx.errors import AnalogError  # noqa: E402
from analog_onnx.runtime import make_session  # noqa: E402
from analog_onnx.train import effect_twins as twins_module  # noqa: E402
from analog_onnx.train.export import INPUT_NAME, to_onnx  # noqa: E402
from analog_onnx.train.hardware import attach_hardware  # noqa: E402
from analog_onnx.train.qat import QatSpec, attach_qat  # noqa: E402
from analog_onnx.train.zoo import build_model  # noqa: E402
from analog_onnx.transform import analog_sites, transform_model  # noqa: E402

SHAPE = (3, 16, 16)


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, SHAPE, 10).train()
    with torch.no_grad():
        model(torch.randn(32, *SHAPE))
    return model.eval()


def _fired(model: nn.Module, hardware, monkeypatch) -> list[tuple[str, str]]:
    """(op type, site name) of every noise hook and analog layer, in the order a forward pass runs them."""
    fired: list[tuple[str, str]] = []
    original_noise = twins_module.NoiseHook.__call__

    def recording_noise(self, module, inputs, output):
        fired.append((self.site.op_type, self.site.name))
        return original_noise(self, module, inputs, output)

    monkeypatch.setattr(twins_module.NoiseHook, "__call__", recording_noise)
    layers = {hardware.model.get_submodule(s.module): s for s in hardware.sites if s.op_type != "Input"}
    handles = [m.register_forward_pre_hook(lambda m, a: fired.append((layers[m].op_type, layers[m].name)))
               for m in layers] if hardware.config.placement.where == "mvm" else []
    with torch.no_grad():
        model(torch.randn(2, *SHAPE))
    for handle in handles:
        handle.remove()
    return fired


CONFIGS = {
    "hardening": load_preset("hardening-additive"),
    "aihwkit": load_preset("aihwkit-default"),
    "selected": load_preset("hardening-additive").with_overrides(
        ["exclude=stages\\.1", "exclude_op_types=BatchNormalization", "network_inputs=false"]),
    "digital ends": load_preset("aihwkit-default").with_overrides(["keep_first_digital=true",
                                                                   "keep_last_digital=true"]),
}


# MobileNetV2 once per placement: ReLU6 exports as Clip (not a default op type), depthwise convs are analog
ORDER_CASES = [(arch, name, qat) for arch in ("lenet5", "resnet20", "vgg11_bn") for name in CONFIGS
               for qat in (None, QatSpec(8, 0.05))] + [("mobilenetv2", "hardening", None),
                                                       ("mobilenetv2", "aihwkit", None)]


@pytest.mark.parametrize(("arch", "config_name", "qat"), ORDER_CASES)
def test_sites_fire_in_the_transforms_order(arch: str, config_name: str, qat: QatSpec | None, monkeypatch) -> None:
    config = CONFIGS[config_name]
    model = _model(arch)
    expected = [(s.op_type, s.name) for s in analog_sites(to_onnx(model, SHAPE, qat=qat).model, config)]
    if qat is not None:
        attach_qat(model, qat)
    hardware = attach_hardware(model, config, SHAPE, qat=qat)
    assert expected
    assert _fired(model, hardware, monkeypatch) == expected


def test_attaching_keeps_parameter_names_and_remove_restores_the_model() -> None:
    model = _model("resnet20")
    keys = list(model.state_dict())
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        clean = model(x)
    for config in (CONFIGS["hardening"], CONFIGS["aihwkit"]):
        hardware = attach_hardware(model, config, SHAPE, noise_scale=0.5)
        assert list(model.state_dict()) == keys
        with torch.no_grad():
            assert not torch.allclose(model(x), clean)
            with hardware.setting(active=False):
                assert torch.equal(model(x), clean)
        hardware.remove()
        with torch.no_grad():
            assert torch.equal(model(x), clean)


def test_functional_activation_sites_are_reported() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x.flatten(1)))

    with pytest.raises(AnalogError, match="not the output of a leaf module"):
        attach_hardware(Functional(), load_preset("hardening-additive"), (3, 2, 2))
    excluded = load_preset("hardening-additive").with_overrides(["exclude_op_types=Relu"])
    assert len(attach_hardware(Functional(), excluded, (3, 2, 2)).sites) == 2  # input and Gemm


def _torch_and_ort(model: nn.Module, config, noise_scale: float, qat: QatSpec | None, x: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Logits of many noisy copies of one input: through the twins, and through the transformed export."""
    exported = to_onnx(model, SHAPE, qat=qat)
    if qat is not None:  # first, as the trainer does: noise may read the quantized output
        attach_qat(model, qat)
    hardware = attach_hardware(model, config, SHAPE, qat=qat, noise_scale=noise_scale)
    torch.manual_seed(1)
    with torch.no_grad():
        twin = model(torch.from_numpy(x)).numpy()
    hardware.remove()
    session = make_session(transform_model(exported.model, config))
    feeds = {INPUT_NAME: x, "noise_scale": np.array(noise_scale, np.float32), "seed": np.array(7, np.int64)}
    return twin, session.run(None, feeds)[0]


@pytest.mark.parametrize(("arch", "preset", "noise_scale", "qat"), [
    ("lenet5", "hardening-additive", 0.3, None),
    ("resnet20", "hardening-additive", 0.2, QatSpec(8, 0.05)),
    ("resnet20", "aihwkit-default", 1.0, None),
    ("mlp", "aihwkit-default", 2.0, QatSpec(6, 0.1)),
    # a coarse step that filters noise placed before the quantizer: the order decides the spread
    ("lenet5", "hardening-additive", 0.2, QatSpec(4, 1.0)),
    ("lenet5", "hardening-additive;noise_after_quantizer=false", 0.2, QatSpec(4, 1.0)),
    ("mlp", "hardening-additive", 0.3, QatSpec(16, 0.01)),
])
def test_noise_statistics_match_onnxruntime(arch: str, preset: str, noise_scale: float, qat: QatSpec | None) -> None:
    """One input repeated 2000 times gives 2000 independent draws on each side (noise is per element)."""
    model = _model(arch)
    x = np.repeat(np.random.default_rng(3).standard_normal((1, *SHAPE)).astype(np.float32), 2000, axis=0)
    name, *overrides = preset.split(";")
    twin, ort = _torch_and_ort(model, load_preset(name).with_overrides(overrides), noise_scale, qat, x)
    spread = ort.std(axis=0)
    assert spread.min() > 0
    np.testing.assert_allclose(twin.std(axis=0), spread, rtol=0.12)
    standard_error = spread / np.sqrt(len(x))
    assert np.all(np.abs(twin.mean(axis=0) - ort.mean(axis=0)) < 5 * np.sqrt(2) * standard_error + 1e-6)


def test_weight_noise_statistics_match_onnxruntime() -> None:
    """forward.w_noise alone (no output noise): the tile twins' spread is the exported tiles'."""
    model = _model("mlp")
    x = np.repeat(np.random.default_rng(5).standard_normal((1, *SHAPE)).astype(np.float32), 2000, axis=0)
    config = load_preset("aihwkit-default").with_overrides(["out_noise=0", "w_noise=0.05"])
    twin, ort = _torch_and_ort(model, config, 1.0, None, x)
    spread = ort.std(axis=0)
    assert spread.min() > 0
    np.testing.assert_allclose(twin.std(axis=0), spread, rtol=0.12)


def test_weight_noise_refuses_layers_that_are_no_tiles() -> None:
    """MobileNetV2's depthwise convolutions keep the periphery, which cannot model w_noise."""
    config = load_preset("aihwkit-default").with_overrides(["w_noise=0.05"])
    model = _model("mobilenetv2")
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        before = model(x)
    with pytest.raises(AnalogError, match="w_noise is modelled on analog tiles only"):
        attach_hardware(model, config, SHAPE)
    with torch.no_grad():  # nothing stays attached
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_zero_noise_twins_equal_the_transformed_model() -> None:
    """At noise_scale 0 only the deterministic parts remain (DAC, ADC, weight quantization): they agree,
    up to a value that lands on the other side of a rounding tie because the two runtimes sum a
    convolution in different orders (one ADC step in one layer, felt by a few logits)."""
    config = load_preset("aihwkit-default").with_overrides(["weights.bits=6"])
    model = _model("resnet20")
    x = np.random.default_rng(4).standard_normal((16, *SHAPE)).astype(np.float32)
    twin, ort = _torch_and_ort(model, config, 0.0, None, x)
    scale = np.abs(ort).max()
    assert np.isclose(twin, ort, rtol=0, atol=1e-5 * scale).mean() >= 0.75  # a wrong weight grid: 0
    np.testing.assert_allclose(twin, ort, atol=0.05 * scale)
    assert (twin.argmax(1) == ort.argmax(1)).mean() >= 0.9


def test_quantizer_filters_noise_only_in_the_old_order() -> None:
    """The placement is not a no-op: with noise after a coarse quantizer the logits spread more
    than with the quantizer rounding most of the noise away. The noise is small beside the step
    (1.0) and the output layer is digital, so only the activations' noise (the quantizer's to
    filter) reaches the logits."""
    spreads = []
    for after in ("true", "false"):
        config = load_preset("hardening-additive").with_overrides([f"noise_after_quantizer={after}",
                                                                   "keep_last_digital=true"])
        x = np.repeat(np.random.default_rng(3).standard_normal((1, *SHAPE)).astype(np.float32), 500, axis=0)
        _, ort = _torch_and_ort(_model("lenet5"), config, 0.05, QatSpec(4, 1.0), x)
        spreads.append(float(ort.std(axis=0).mean()))
    assert spreads[0] > 1.5 * spreads[1]


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_activation_noise_reads_the_dequantized_activation(bits: int) -> None:
    """In a transformed QAT export every ReLU's noise sits after the ReLU's quantizer (its
    DequantizeLinear, or the Quantize op beyond 8 bits), never between ReLU and quantizer."""
    import onnx

    model = transform_model(to_onnx(_model("lenet5"), SHAPE, qat=QatSpec(bits, 0.5)).model,
                            load_preset("hardening-additive"))
    producers = {out: node for node in model.graph.node for out in node.output}
    noises = [n for n in model.graph.node if n.op_type == "Noise"]
    after_relu = [producers[n.input[0]] for n in noises if n.input[0] in producers]
    quantizers = [p for p in after_relu if p.op_type in ("DequantizeLinear", "Quantize")]
    assert len(quantizers) == sum(n.op_type == "Relu" for n in model.graph.node) > 0
    assert not [p for p in after_relu if p.op_type == "Relu"]
    assert onnx.checker.check_model(model) is None
