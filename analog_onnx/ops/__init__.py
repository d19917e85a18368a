"""The analog op set: one semantics, four implementations.

Every op lives in the ONNX domain ``ai.analog`` (version 1) and has

- an ONNX function body (``functions.py``, standard ops only) so a transformed model runs anywhere,
- a numpy reference (``reference.py``): the readable definition used by the tests,
- a native onnxruntime kernel (``native/``) for speed,
- a torch twin (``torch_twins.py``) for training.

Ops (see ``reference.py`` for the exact definitions):

``Noise(X, noise_scale, seed) -> Y``
    Gaussian noise: ``Y = X * (1 + s*sigma_mul*z1) + s*sigma_add*R*z2`` where ``s`` is the
    ``noise_scale`` input and ``R`` is 1 or, with ``relative=1``, the per-sample abs-max of X.
``Quantize(X) -> Y``
    Uniform fake quantization with clipping, half-to-even rounding, signed or unsigned,
    constant scale or dynamic abs-max scale per row of ``Flatten(X, axis)``.
``MvmInput(X) -> (Xn, S)``
    The input side of an analog matrix-vector product: abs-max noise management (``S``),
    then the DAC (clip to ``inp_bound``, ``inp_bits`` quantization).
``MvmOutput(Y, S, noise_scale, seed) -> Z``
    The output side: additive output noise in normalized units, the ADC (clip to
    ``out_bound``, ``out_bits`` quantization), and rescaling by ``S`` and the weight scale.
``DeviceWeights(W, noise_scale, seed, chip_seed, t_inference) -> (W_read, alpha)``
    The weights as one read of a programmed chip sees them (conductance mapping and levels,
    programming noise, stuck devices, drift to ``t_inference``, read noise; ``analog_onnx.devices``)
    and the layer's drift-compensation factor.
``AnalogTile(X, W, noise_scale, seed) -> Y``
    An analog layer ``Y[..., M] = X[..., K] W^T`` on tiles as aihwkit computes it, per input
    vector: tiles of ``max_input_size`` x ``max_output_size``, weight mapping, abs-max noise
    management, DAC, output noise, ADC, iterative bound management, digital sum over tiles.

Each op is declared once in ``schema.py`` (inputs, outputs, attributes and defaults, example
cases); the function bodies, the native library's op list, the benchmarks and the conformance
test read it.

The native library has ops more, which never appear in a file, put in place in memory for native
sessions only (see ``analog_onnx/native_graph.py``): ``MvmOutputEpilogue`` is ``MvmOutput``
followed by a per-channel scale and shift and an optional ReLU; ``AnalogTileEpilogue`` is
``AnalogTile`` with that epilogue; ``AnalogTileConv`` is a 2-D convolution's ``AnalogTile`` reading
its im2col patches straight from the NCHW input, with that epilogue; ``NoiseChain`` is a ``Noise``
and the elementwise layers after it (more ``Noise``, inference BatchNormalization, per-channel
bias, a residual ``Add``, ``Relu``) as one pass, each stage drawing the normals its own op would.
``AnalogTileEpilogue`` may also read a constant W from the model's data file itself, and
``StoredWeights`` reads a weight from it at each run (for a ``DeviceWeights``), so onnxruntime never
holds a big model's weights beside the kernels' own copies.
"""

DOMAIN = "ai.analog"
OPSET_VERSION = 1

from analog_onnx.ops.schema import OPS  # noqa: E402 (the schema needs nothing from here)

OP_NAMES = tuple(op.name for op in OPS if not op.native_only)
NATIVE_ONLY_OPS = tuple(op.name for op in OPS if op.native_only)
NATIVE_OPS = tuple(op.name for op in OPS if op.native)  # the native library's ops, in its order
