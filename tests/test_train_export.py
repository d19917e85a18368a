"""Export: ORT equals torch for every zoo architecture, QAT quantizers kept in standard form,
noise left out, metadata written, checkpoints exported by the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from analog_onnx.config import load_preset  # noqa: E402
from analog_onnx.errors import AnalogError  # noqa: E402
from analog_onnx.ops import DOMAIN  # noqa: E402
from analog_onnx.runtime import make_session  # noqa: E402
from analog_onnx.train.attach import has_twins  # noqa: E402
from analog_onnx.train.export import INPUT_NAME, check_export, to_onnx  # noqa: E402
from analog_onnx.train.hardware import attach_hardware  # noqa: E402
from analog_onnx.train.qat import QatSpec, attach_qat  # noqa: E402
from analog_onnx.train.zoo import ARCHS, TOKEN_ARCHS, build_model  # noqa: E402
from analog_onnx.transform import analog_sites  # noqa: E402

SHAPE = (3, 16, 16)


def _trained_like(arch: str) -> torch.nn.Module:
    """A zoo model with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = build_model(arch, SHAPE, 10).train()
    with torch.no_grad():
        model(torch.randn(32, *SHAPE) * 2 + 0.5)
    return model.eval()


def _inputs(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *SHAPE)).astype(np.float32)


def _op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("arch", [arch for arch in ARCHS if arch not in TOKEN_ARCHS])
def test_round_trip_matches_torch_for_every_arch(arch: str) -> None:
    model = _trained_like(arch)
    exported = to_onnx(model, SHAPE)
    x = _inputs()
    expected = model(torch.from_numpy(x)).detach().numpy()
    got = make_session(exported.model).run(None, {INPUT_NAME: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max()))
    assert check_export(exported, x) < 1e-3
    assert "BatchNormalization" in _op_types(exported.model) or not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # BN kept, not folded into the conv


@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_token_models_export_int64_ids_with_dynamic_batch_and_sequence(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, (16,), 30).eval()
    exported = to_onnx(model, (16,), tokens=True)
    assert exported.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    session = make_session(exported.model)
    for shape in ((1, 16), (3, 5)):
        ids = np.random.default_rng(1).integers(0, 30, shape)
        expected = model(torch.from_numpy(ids)).detach().numpy()
        got = session.run(None, {INPUT_NAME: ids})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max()))
    assert check_export(exported, np.random.default_rng(2).integers(0, 30, (4, 16))) < 1e-3


def test_batch_axis_is_dynamic() -> None:
    exported = to_onnx(_trained_like("lenet5"), SHAPE)
    session = make_session(exported.model)
    for n in (1, 5):
        assert session.run(None, {INPUT_NAME: _inputs(n)})[0].shape == (n, 10)


@pytest.mark.parametrize(("bits", "quantize_ops", "clip"), [(8, {"QuantizeLinear", "DequantizeLinear"}, False),
                                                            (4, {"QuantizeLinear", "DequantizeLinear"}, True),
                                                            (10, {"Quantize"}, False)])
def test_qat_quantizers_are_kept(bits: int, quantize_ops: set[str], clip: bool) -> None:
    model = _trained_like("resnet20")
    spec = QatSpec(bits, 1 / 16)
    exported = to_onnx(model, SHAPE, qat=spec)
    ops = _op_types(exported.model)
    assert quantize_ops <= ops
    assert ("Clip" in ops) == clip  # 8-bit unsigned saturates at the bound by itself
    check_export(exported, _inputs())
    # the export computes what training computes (the QAT twins)
    attach_qat(model, spec)
    with torch.no_grad():
        trained = model(torch.from_numpy(_inputs())).numpy()
        reference = exported.module(torch.from_numpy(_inputs())).numpy()
    np.testing.assert_allclose(trained, reference, atol=1e-5)
    if bits <= 8:  # integer weights behind DequantizeLinear, one scale per output channel for Conv
        weights = [t for t in exported.model.graph.initializer if t.name.endswith("_quantized")]
        assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    else:  # our op, with its function body, so plain onnxruntime runs it
        assert any(f.domain == DOMAIN for f in exported.model.functions)


def test_transform_sees_qat_weights_as_analog_layers() -> None:
    model = _trained_like("lenet5")
    exported = to_onnx(model, SHAPE, qat=QatSpec(6, 0.1))
    layers = sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in model.modules())
    assert len(analog_sites(exported.model, load_preset("aihwkit-default"))) == layers


def test_noise_is_not_exported_and_the_model_keeps_its_twins() -> None:
    model = _trained_like("lenet5")
    hardware = attach_hardware(model, load_preset("hardening-additive"), SHAPE)
    exported = to_onnx(model, SHAPE)
    assert not any(node.domain == DOMAIN for node in exported.model.graph.node)
    assert has_twins(model) and not has_twins(exported.module)
    x = torch.from_numpy(_inputs())
    with torch.no_grad(), hardware.setting(active=False):
        np.testing.assert_allclose(model(x).numpy(), exported.module(x).numpy(), atol=1e-6)


def test_a_wrong_export_is_caught() -> None:
    model = _trained_like("mlp")
    exported = to_onnx(model, SHAPE)
    with torch.no_grad():
        exported.module[1].weight.mul_(1.01)
    with pytest.raises(AnalogError, match="disagrees with torch"):
        check_export(exported, _inputs())


def test_export_command_writes_metadata_and_refuses_to_overwrite(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from analog_onnx.cli import app
    from analog_onnx.train.trainer import TrainConfig, train

    train(TrainConfig(arch="mlp", data="digits", out=str(tmp_path / "run"), method="qat", epochs=1, batch_size=64,
                      export=False), progress=False, verbose=False)
    runner = CliRunner()
    target = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(tmp_path / "run" / "best.pt"), "-o", str(target)])
    assert result.exit_code == 0, result.output
    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    preprocess = json.loads(props["analog_onnx.preprocess"])
    assert len(preprocess["mean"]) == len(preprocess["std"]) == 1  # digits: one channel
    record = json.loads(props["analog_onnx.train"])
    assert record["method"] == "qat" and record["qat"]["bits"] == 8
    again = runner.invoke(app, ["export", str(tmp_path / "run" / "best.pt"), "-o", str(target)])
    assert again.exit_code != 0
    missing = runner.invoke(app, ["export", str(tmp_path / "nope.pt")])
    assert missing.exit_code != 0
