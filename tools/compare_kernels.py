"""Bit for bit: the analog tile of two builds of the native library on the same cases.

A kernel change that is meant to keep every result (a faster product, a split of a function) is
checked by building the library before and after (``ANALOG_ONNX_CACHE=DIR analog-onnx kernels
build`` with the old sources on ``PYTHONPATH``) and running

    .venv/bin/python tools/compare_kernels.py OLD_LIBRARY [NEW_LIBRARY]

(``NEW_LIBRARY`` defaults to the library of the current sources). It runs ``AnalogTile``,
``AnalogTileEpilogue`` and ``AnalogTileConv`` on dense and convolution cases (odd sizes, strides,
dilations, asymmetric padding, several tiles, saturating bound management, noise on and off, W a
constant and W an input), every op-schema case of the tile, and a whole ResNet-20 under
``aihwkit-default`` at a fixed seed (both libraries run the same prepared graphs), and prints
every case whose outputs differ in any bit.
Exit status 1 when one does.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from analog_onnx import native_graph
from analog_onnx.config import load_preset
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.native.build import library_path
from analog_onnx.ops.schema import SCHEMAS
from analog_onnx.transform import transform_model

PASS_THROUGH = {"noise_management": 0, "inp_bits": 0, "out_bits": 0}
SETTINGS = {**SCHEMAS["AnalogTile"].cases, "pass-through": PASS_THROUGH,
            "saturating": {"inp_bits": 7, "out_bits": 9, "out_bound": 0.8, "bm_rounds": 5, "out_noise": 0.06,
                           "max_input_size": 20, "max_output_size": 5}}
DENSE = ((1, 5, 3), (7, 37, 10), (95, 40, 8), (97, 300, 17), (200, 600, 64), (1000, 40, 1))  # N, K, M
# N, C, H, W, M, kernel, stride (or a pair), pads, dilation
CONVOLUTIONS = ((2, 3, 8, 8, 4, 3, 1, (1, 1, 1, 1), 1), (3, 5, 7, 9, 6, 3, 2, (1, 1, 1, 1), 1),
                (2, 4, 17, 33, 8, 1, 2, (0, 0, 0, 0), 1), (1, 2, 40, 40, 16, 3, 1, (1, 1, 1, 1), 1),
                (2, 3, 9, 9, 5, 3, 1, (2, 2, 2, 2), 2), (2, 3, 11, 12, 3, 5, 3, (2, 2, 2, 2), 1),
                (2, 16, 32, 32, 16, 3, 1, (1, 1, 1, 1), 1), (2, 64, 8, 8, 64, 3, 1, (1, 1, 1, 1), 1),
                (1, 1, 1, 1, 1, 1, 1, (0, 0, 0, 0), 1), (2, 3, 10, 7, 7, 3, 1, (0, 1, 2, 0), 1),
                # outputs narrower than a vector, whole vectors per image (the slab's shifted layout)
                (2, 3, 8, 4, 5, 3, (1, 2), (1, 1, 1, 1), 1), (2, 4, 8, 8, 6, 3, 1, (2, 2, 2, 2), 2),
                (3, 6, 4, 4, 9, 3, 1, (1, 1, 1, 1), 1), (7, 8, 8, 8, 8, 3, 1, (1, 1, 1, 1), 1))


def session(model: onnx.ModelProto, library: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def tile_model(op: str, x: np.ndarray, w: np.ndarray, attributes: dict, constant_w: bool,
               epilogue: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    m = w.shape[0]
    inputs = ["X", "W", "noise_scale", "seed"] + (["scale", "shift"] if epilogue else [])
    feeds = {"X": x, "noise_scale": np.array(1.0, np.float32), "seed": np.array(3, np.int64)}
    constants = [numpy_helper.from_array(rng.uniform(0.5, 1.5, m).astype(np.float32), "scale"),
                 numpy_helper.from_array(rng.normal(0, 0.2, m).astype(np.float32), "shift")] if epilogue else []
    if constant_w:
        constants.append(numpy_helper.from_array(w, "W"))
    else:
        feeds["W"] = w
    node = helper.make_node(op, inputs, ["Y"], domain=DOMAIN, **attributes)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for n, v in feeds.items()]
    graph = helper.make_graph([node], "tile", graph_inputs, [helper.make_tensor_value_info("Y", 1, None)], constants)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET_VERSION)]
    return helper.make_model(graph, opset_imports=opsets), feeds


def cases():
    """(name, model, feeds) for every tile case."""
    rng = np.random.default_rng(0)
    for (n, k, m), (label, settings), constant in itertools.product(DENSE, SETTINGS.items(), (True, False)):
        x = (rng.standard_normal((n, k)) * 2).astype(np.float32)
        w = (rng.standard_normal((m, k)) * 0.3).astype(np.float32)
        for op in ("AnalogTile", "AnalogTileEpilogue"):
            model, feeds = tile_model(op, x, w, {**settings, "relu": 1} if op != "AnalogTile" else settings, constant,
                                      op != "AnalogTile")
            yield f"{op} {n}x{k}->{m} {label} {'constant' if constant else 'input'} W", model, feeds
    for (n, c, h, wd, m, kernel, stride, pads, dilation), (label, settings) in itertools.product(CONVOLUTIONS,
                                                                                                 SETTINGS.items()):
        x = (rng.standard_normal((n, c, h, wd)) * 2).astype(np.float32)
        w = (rng.standard_normal((m, c, kernel, kernel)) * 0.3).astype(np.float32)
        strides = list(stride) if isinstance(stride, tuple) else [stride] * 2
        attributes = {**settings, "pads": list(pads), "strides": strides, "dilations": [dilation] * 2, "relu": 1}
        model, feeds = tile_model("AnalogTileConv", x, w, attributes, True, True)
        yield f"AnalogTileConv {x.shape} {w.shape} s{stride} p{pads} d{dilation} {label}", model, feeds


def resnet20() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The network as a native session runs it, and its feeds."""
    import torch

    from analog_onnx.train.export import to_onnx
    from analog_onnx.train.zoo import build_model

    torch.manual_seed(0)
    clean = to_onnx(build_model("resnet20", (3, 32, 32), 10), (3, 32, 32)).model
    analog = transform_model(clean, load_preset("aihwkit-default"))
    x = np.random.default_rng(0).random((32, 3, 32, 32), dtype=np.float32)
    return native_graph.prepare(analog), {clean.graph.input[0].name: x, "seed": np.array(7, np.int64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default=str(library_path()))
    args = parser.parse_args()
    differing = total = 0
    for name, model, feeds in [*cases(), ("ResNet-20 aihwkit-default, batch 32, seed 7", *resnet20())]:
        old, new = (session(model, library).run(None, feeds)[0] for library in (args.old, args.new))
        total += 1
        if old.tobytes() != new.tobytes():
            differing += 1
            print(f"DIFFERS: {name}: {np.count_nonzero(old != new)} of {old.size} values, "
                  f"max |difference| {np.nanmax(np.abs(old - new)):.3g}")
    print(f"{total - differing} of {total} cases bit-identical")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
