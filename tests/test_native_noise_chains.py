"""NoiseChain: activation noise and the elementwise layers between it, fused for native sessions,
compute what the separate ops compute, normal for normal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import op_model, residual_block
from onnx import TensorProto
from onnx import helper as h

from analog_onnx.config import load_preset
from analog_onnx.native_graph import fuse_noise_chains, prepare
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.schema import ChainStep
from analog_onnx.runtime import make_session, session_options
from analog_onnx.transform import transform_model

pytestmark = pytest.mark.native

NOISE, AFFINE, RESIDUAL, RELU = ChainStep  # the program's step codes


def hardened(model: onnx.ModelProto) -> onnx.ModelProto:
    return transform_model(model, load_preset("hardening-additive"))


def programs(model: onnx.ModelProto | None) -> list[list[int]]:
    """The steps of each NoiseChain of ``model``, in graph order."""
    if model is None:
        return []
    return [list(h.get_attribute_value(next(a for a in n.attribute if a.name == "steps")))
            for n in model.graph.node if n.op_type == "NoiseChain"]


def run(model: onnx.ModelProto, feeds: dict, *, native: bool = True, threads: int = 2) -> list[np.ndarray]:
    """A session of exactly ``model`` (make_session would rewrite it)."""
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads, native=native),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def controls(seed: int, noise_scale: float) -> dict[str, np.ndarray]:
    return {"seed": np.array(seed, np.int64), "noise_scale": np.array(noise_scale, np.float32)}


def test_the_residual_block_becomes_conv_and_one_chain_per_layer(rng):
    fused = prepare(hardened(residual_block(rng)))
    # conv1: noise, BN, noise, ReLU, noise; conv2: noise, its BN, noise, the residual Add, ReLU,
    # noise; the Gemm: noise, ReLU, noise. The input's and the pooling's Noise stay alone.
    assert programs(fused) == [[NOISE, AFFINE, NOISE, RELU, NOISE],
                               [NOISE, AFFINE, NOISE, RESIDUAL, RELU, NOISE], [NOISE, RELU, NOISE]]
    kinds = [n.op_type for n in fused.graph.node]
    assert kinds.count("Conv") == 2 and kinds.count("Noise") == 2
    assert not {"BatchNormalization", "Relu", "Add"} & set(kinds)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("noise_scale", [0.0, 0.7])
def test_chains_draw_the_normals_of_the_ops_they_replace(rng, noise_scale, threads):
    model = hardened(residual_block(rng))
    fused = prepare(model)
    x = rng.standard_normal((3, 3, 6, 6)).astype(np.float32)
    for seed in (0, 11, 2**40 + 3):
        feeds = {"x": x, **controls(seed, noise_scale)}
        got = run(fused, feeds, threads=threads)[0]
        np.testing.assert_allclose(got, run(model, feeds, threads=threads)[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, run(model, feeds, native=False)[0], rtol=1e-4, atol=1e-4)
    if noise_scale:  # the seed matters, so the stages draw noise at all
        other = run(fused, {"x": x, **controls(12, noise_scale)})[0]
        assert not np.allclose(other, got)


def test_large_tensors_split_over_threads_give_the_same_numbers(rng):
    model = hardened(residual_block(rng))
    fused = prepare(model)
    feeds = {"x": rng.standard_normal((300, 3, 6, 6)).astype(np.float32), **controls(5, 0.3)}  # 43200 per map
    one, two = run(fused, feeds, threads=1)[0], run(fused, feeds, threads=2)[0]
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_multiplicative_noise_chains_too(rng):
    config = load_preset("hardening-additive")
    model = transform_model(residual_block(rng), replace(config, noise=replace(config.noise, multiplicative=0.2)))
    fused = prepare(model)
    assert programs(fused)
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), **controls(3, 1.0)}
    np.testing.assert_allclose(run(fused, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_exported_models_fuse_and_agree(exported_models, rng):
    model = hardened(exported_models["cnn"])  # TorchScript folded the BatchNorms into the Conv biases
    fused = prepare(model)
    assert [NOISE, RESIDUAL, RELU, NOISE] in programs(fused)
    feeds = {model.graph.input[0].name: rng.random((4, 3, 4, 4), dtype=np.float32), **controls(9, 0.5)}
    np.testing.assert_allclose(run(fused, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(make_session(model, native=True).run(None, feeds)[0],
                               make_session(model, native=False).run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def node(model: onnx.ModelProto, output: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.output[0] == output)


def test_a_value_read_twice_ends_the_chain(rng):
    model = hardened(residual_block(rng))
    model.graph.output.append(h.make_tensor_value_info("n1", TensorProto.FLOAT, None))  # BN1's output, noised next
    fused = prepare(model)
    assert programs(fused)[0] == [NOISE, AFFINE]  # the chain stops at n1; n1's Noise starts the next
    assert programs(fused)[1] == [NOISE, RELU, NOISE]
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), **controls(4, 1.0)}
    for got, want in zip(run(fused, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_batch_norm_with_a_parameter_from_the_graph_is_left_alone(rng):
    model = hardened(residual_block(rng))
    gamma = next(t for t in model.graph.initializer if t.name == "bn1_g")
    model.graph.input.append(h.make_tensor_value_info("bn1_g", TensorProto.FLOAT, [4]))  # overridable now
    fused = prepare(model)
    assert programs(fused)[0] == [NOISE, RELU, NOISE]  # after BN1; c1's Noise stays alone
    assert node(fused, "n1").op_type == "BatchNormalization" and node(fused, "c1_analog").op_type == "Noise"
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), **controls(4, 1.0),
             "bn1_g": onnx.numpy_helper.to_array(gamma) * 2}
    np.testing.assert_allclose(run(fused, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_relative_noise_and_other_controls_are_not_chained(rng):
    model = hardened(residual_block(rng))
    h_attribute = next(a for a in node(model, "n1_analog").attribute if a.name == "relative")
    h_attribute.i = 1  # scales by its row's abs-max: needs the whole row before it
    fused = prepare(model)
    assert programs(fused)[0] == [NOISE, AFFINE]
    assert node(fused, "n1_analog").op_type == "Noise"
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), **controls(8, 1.0)}
    np.testing.assert_allclose(run(fused, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)

    other_seed = hardened(residual_block(rng))
    other_seed.graph.input.append(h.make_tensor_value_info("seed2", TensorProto.INT64, []))
    node(other_seed, "n1_analog").input[2] = "seed2"
    assert programs(prepare(other_seed))[0] == [NOISE, AFFINE]


def test_a_residual_not_proven_of_the_same_shape_is_not_chained(rng):
    unknown = hardened(residual_block(rng))
    unknown.graph.input[0].type.tensor_type.ClearField("shape")  # x of unknown shape: so are r1 and n2
    del unknown.graph.value_info[:]
    assert RESIDUAL not in sum(programs(prepare(unknown)), [])

    broadcast = hardened(residual_block(rng))  # the residual Add reads a [4, 1, 1] input instead of r1
    broadcast.graph.input.append(h.make_tensor_value_info("per_channel", TensorProto.FLOAT, [4, 1, 1]))
    node(broadcast, "a2").input[1] = "per_channel"
    fused = prepare(broadcast)
    assert RESIDUAL not in sum(programs(fused), [])
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), **controls(1, 1.0),
             "per_channel": rng.standard_normal((4, 1, 1)).astype(np.float32)}
    np.testing.assert_allclose(run(fused, feeds)[0], run(broadcast, feeds)[0], rtol=1e-5, atol=1e-5)


def test_models_without_a_chain_are_not_copied(exported_models):
    assert fuse_noise_chains(exported_models["mlp"]) is None
    assert fuse_noise_chains(transform_model(exported_models["mlp"], load_preset("aihwkit-default"))) is None


def test_the_kernel_refuses_a_program_or_residual_that_does_not_fit():
    def chain_model(steps: list[int], noises: int = 1) -> onnx.ModelProto:
        x = h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
        node = h.make_node("NoiseChain", ["x", "noise_scale", "seed", "", "", "r"], ["y"], domain=DOMAIN,
                           steps=steps, streams=[1] * noises, sigma_add=[1.0] * noises, sigma_mul=[0.0] * noises)
        graph = h.make_graph([node], "chain", [x, h.make_tensor_value_info("r", TensorProto.FLOAT, None),
                                               h.make_tensor_value_info("noise_scale", TensorProto.FLOAT, []),
                                               h.make_tensor_value_info("seed", TensorProto.INT64, [])],
                             [h.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(DOMAIN, OPSET_VERSION)])

    feeds = {"x": np.ones((2, 3, 4), np.float32), **controls(1, 1.0)}
    got = run(chain_model([NOISE, RESIDUAL]), {**feeds, "r": np.full((2, 3, 4), 2, np.float32)})[0]
    noise_feeds = {"X": feeds["x"], "noise_scale": feeds["noise_scale"], "seed": feeds["seed"]}  # in input order
    noise = run(op_model("Noise", {"sigma_add": 1.0, "stream": 1}, noise_feeds), noise_feeds)[0]
    np.testing.assert_allclose(got, noise + 2, rtol=1e-6)  # the noise, then the residual
    with pytest.raises(Exception, match="R must have X's shape"):
        run(chain_model([NOISE, RESIDUAL]), {**feeds, "r": np.ones((3, 4), np.float32)})
    with pytest.raises(Exception, match="one value per noise step"):
        run(chain_model([NOISE, NOISE]), {**feeds, "r": feeds["x"]})
    with pytest.raises(Exception, match="input scale is not given"):
        run(chain_model([NOISE, AFFINE]), {**feeds, "r": feeds["x"]})
