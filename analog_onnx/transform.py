"""Public API of the graph transform: make an ONNX model analog, inspect it, undo it.

``transform_model`` runs one pass manager: the control inputs, the pass of each enabled effect
(``analog_onnx/effects.py``), our function bodies and the metadata (one rule per file). Model
files are read and written by ``load_model``/``save_model``, which turn every reading problem
into one clear :class:`~analog_onnx.errors.ModelError` and never leave half-written output.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx.version_converter
import onnx_ir as ir

from analog_onnx import arguments
from analog_onnx.config import AnalogConfig
from analog_onnx.effects import enabled_effects
from analog_onnx.errors import AnalogError, ConfigError, ModelError
from analog_onnx.files import atomic_output, atomic_outputs, first_line, readable_file
from analog_onnx.ops import DOMAIN
from analog_onnx.passes.add_controls import AddControlInputsPass
from analog_onnx.passes.common import CONFIG_KEY, INPUTS_KEY, METADATA_KEYS, NODE_KEYS, SITES_KEY, VERSION_KEY
from analog_onnx.passes.name_nodes import NameNodesPass
from analog_onnx.passes.qonnx_to_standard import QonnxToStandardPass
from analog_onnx.passes.sites import DigitalNode, Site, digital_nodes, find_sites, nested_nodes, node_labels
from analog_onnx.passes.strip_analog import StripAnalogPass
from analog_onnx.passes.write_metadata import WriteMetadataPass

MIN_OPSET = 13

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalogMetadata:
    """What a transformed model says about how it was made."""

    config: AnalogConfig
    version: str
    inputs: dict[str, str]  # control (noise_scale, seed, chip_seed, t_inference) -> graph input name
    sites: list[str]

    @property
    def noise_scale_input(self) -> str:
        return self.inputs["noise_scale"]

    @property
    def seed_input(self) -> str:
        return self.inputs["seed"]


def read_analog_metadata(model: onnx.ModelProto | ir.Model) -> AnalogMetadata | None:
    """The analog metadata of a transformed model, or None for a plain model."""
    props = (model.metadata_props if isinstance(model, ir.Model)
             else {p.key: p.value for p in model.metadata_props})
    if CONFIG_KEY not in props:
        return None
    inputs = _metadata_json(props, INPUTS_KEY, "{}", dict)
    sites = _metadata_json(props, SITES_KEY, "[]", list)
    try:
        config = AnalogConfig.from_dict(_metadata_json(props, CONFIG_KEY, "{}", dict))
    except ConfigError as e:
        raise ModelError(f"model metadata {CONFIG_KEY} is not a valid config: {e}") from None
    inputs = {"noise_scale": "noise_scale", "seed": "seed", **inputs}
    if not all(isinstance(name, str) for name in [*inputs.values(), *sites]):
        raise ModelError(f"model metadata {INPUTS_KEY}/{SITES_KEY} must hold names (strings)")
    graph_inputs = ({v.name for v in model.graph.inputs} if isinstance(model, ir.Model)
                    else {v.name for v in model.graph.input})
    missing = next((f"{control} -> {name!r}" for control, name in inputs.items() if name not in graph_inputs), None)
    if missing:
        raise ModelError(f"model metadata {INPUTS_KEY} maps {missing}, which is not an input of the graph: "
                         "the file was edited; transform the original model again")
    return AnalogMetadata(config=config, version=str(props.get(VERSION_KEY, "")), inputs=inputs, sites=sites)


def _metadata_json(props: Mapping[str, str], key: str, default: str, kind: type) -> Any:
    """One JSON metadata entry of the expected kind; anything else is one ModelError naming the key."""
    try:
        value = json.loads(props.get(key, default))
    except (ValueError, RecursionError):
        raise ModelError(f"model metadata {key} is not valid JSON; the file was not written by analog-onnx "
                         "or was edited") from None
    if not isinstance(value, kind):
        raise ModelError(f"model metadata {key} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _working_copy(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """An IR model the passes may change. Deserializing a proto already builds new objects, and an
    IR model is cloned; tensor data is shared, never written (a pass that changes a weight makes a
    new tensor), so a model of any size is never copied, and no 2 GB protobuf round trip."""
    if isinstance(model, ir.Model):
        return model.clone()
    return ir.serde.deserialize_model(model)


def _like(result: ir.Model, original: onnx.ModelProto | ir.Model) -> onnx.ModelProto | ir.Model:
    return result if isinstance(original, ir.Model) else ir.serde.serialize_model(result)


def standard_model(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto | ir.Model:
    """``model`` as standard ONNX the transform works on (a new object; the input is not changed):
    opsets below ``MIN_OPSET`` upgraded, QONNX quantizers converted (passes/qonnx_to_standard.py),
    every node of the main graph named uniquely (passes/name_nodes.py: sites are named after them)."""
    return _like(_standardized(_working_copy(model)), model)


def _standardized(model: ir.Model) -> ir.Model:
    model = _upgraded(model)
    QonnxToStandardPass()(model)
    NameNodesPass()(model)
    return model


def _transformable(model: ir.Model) -> ir.Model:
    """The working copy, refused when already transformed, else standardized and without stale
    marks of ours."""
    if read_analog_metadata(model) is not None or any(_inserted(node) for node in model.graph):
        raise ModelError("model is already transformed; run `analog-onnx strip` first")
    _drop_stale_marks(model)
    return _standardized(model)


FLOAT_TYPES = {ir.DataType.FLOAT16: "float16", ir.DataType.DOUBLE: "float64", ir.DataType.BFLOAT16: "bfloat16"}


def _check_float32(sites: list[Site]) -> None:
    """The analog ops compute in float32: refuse a site whose tensors (a layer's input and weight,
    the value that gets noise) are another float type, before any pass runs. A model that is not
    float32 where nothing is placed (the ``ideal`` preset) transforms as it is."""
    for site in sites:
        layer = site.node is not None and site.weight is not None
        for value in (*(site.node.inputs[:2] if layer else ()), site.value):
            if value is not None and value.dtype in FLOAT_TYPES:
                raise ModelError(f"{value.name} is {FLOAT_TYPES[value.dtype]}; analog-onnx transforms float32 "
                                 "models (convert the model to float32 first)")


def _inserted(node: ir.Node) -> bool:
    """Whether a node of our domain is one only the transform makes: every op but ``Quantize``,
    which an exporter uses for a model's own quantizer (QAT activations beyond 8 bits)."""
    return node.domain == DOMAIN and node.op_type != "Quantize"


def _drop_stale_marks(model: ir.Model) -> None:
    """Remove the metadata only the transform writes from a model that is not transformed (an
    edited file): a node marked as inserted would be skipped as a site and deleted by strip."""
    marked = [node for node in model.graph if any(key in node.metadata_props for key in NODE_KEYS)]
    for node in marked:
        for key in NODE_KEYS:
            node.metadata_props.pop(key, None)
    stale = [key for key in METADATA_KEYS if model.metadata_props.pop(key, None) is not None]
    if marked or stale:
        where = f"node {marked[0].name!r}" + (f" and {len(marked) - 1} more" if len(marked) > 1 else "") \
            if marked else f"model metadata {', '.join(stale)}"
        log.warning("%s carried analog-onnx marks in a model that is not transformed (an edited file): "
                    "removed them", where)


def _upgraded(model: ir.Model) -> ir.Model:
    """The model at ``MIN_OPSET`` when older, upgraded with ``onnx.version_converter`` (it works on
    the caller's working copy, so the caller's model stays as it was)."""
    opset = model.opset_imports.get("")
    if opset is None:
        raise ModelError("model imports no default ONNX opset; analog-onnx needs the standard operators")
    if opset >= MIN_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(ir.serde.serialize_model(model), MIN_OPSET)
    except Exception as e:  # the converter raises RuntimeError, ValueError or onnx's own errors
        raise ModelError(f"model uses opset {opset} and onnx.version_converter cannot upgrade it to "
                         f"{MIN_OPSET} ({first_line(e)})") from None
    # the IR version goes with the opset (before IR 4, ORT cannot feed an input that has an initializer)
    upgraded.ir_version = max(upgraded.ir_version, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", MIN_OPSET)]))
    log.warning("model uses opset %d: upgraded to opset %d with onnx.version_converter (the input is unchanged)",
                opset, MIN_OPSET)
    return ir.serde.deserialize_model(upgraded)


def analog_sites(model: onnx.ModelProto | ir.Model, config: AnalogConfig) -> list[Site]:
    """The places ``transform_model`` would touch under ``config``, in graph order (none when
    the config enables no effect), found as the transform finds them: on the standard model (a
    QONNX weight behind ``Quant`` is a constant weight there)."""
    _check_arguments(model, config)
    return _sites(_standardized(_working_copy(model)), config)


def digital_layers(model: onnx.ModelProto | ir.Model, config: AnalogConfig) -> list[DigitalNode]:
    """The nodes that read a constant matrix and that ``transform_model`` leaves digital under
    ``config`` ("mvm" placement), then the layers inside subgraphs and functions, with the
    reason, found on the standard model as the transform finds its sites."""
    _check_arguments(model, config)
    standard = _standardized(_working_copy(model))
    return digital_nodes(standard.graph, config) + nested_nodes(standard, config)


def _sites(model: ir.Model, config: AnalogConfig) -> list[Site]:
    return find_sites(model.graph, config) if enabled_effects(config) else []


def transform_model(model: onnx.ModelProto | ir.Model, config: AnalogConfig, *,
                    sites: Collection[str] | None = None) -> onnx.ModelProto | ir.Model:
    """Insert the analog ops that ``config`` describes; ``sites`` restricts them to these names.

    Returns the same kind of object it was given (a new one; the input is not changed).
    """
    _check_arguments(model, config)
    sites = arguments.names(sites, "sites") if sites is not None else None
    work = _transformable(_working_copy(model))
    _check_includes(work, config)
    _check_op_types(config)
    found = _sites(work, config)
    _check_float32(found)
    _check_nested(work, config, found, warn=sites is None)
    unknown = set(sites or ()) - {s.name for s in found}
    if unknown:
        raise ModelError(f"unknown site(s): {', '.join(sorted(unknown))}")
    only = None if sites is None else frozenset(sites)
    from analog_onnx.passes.add_functions import AddAnalogFunctionsPass  # onnxscript: only a transform needs it

    passes = ir.passes.PassManager([
        AddControlInputsPass(config.t_inference),
        *(effect.make_pass(config, only) for effect in enabled_effects(config)),
        AddAnalogFunctionsPass(),
        WriteMetadataPass(config, only),
    ])
    try:
        passes(work)
    except ir.passes.PassError as error:  # the manager wraps what a pass raises: a user's error stays one line
        if isinstance(error.__cause__, AnalogError):
            raise error.__cause__ from None
        raise
    return _like(work, model)


def _check_nested(model: ir.Model, config: AnalogConfig, found: list[Site], *, warn: bool) -> None:
    """Candidates inside subgraphs or functions stay digital: an error when they are all the model
    has (its "analog" form would be the clean model), else a warning unless ``warn`` is off (a
    caller naming its sites, as a sensitivity sweep does per site, transformed the whole model first)."""
    nested = nested_nodes(model, config) if enabled_effects(config) else []
    if not nested:
        return
    what = "layers" if config.placement.where == "mvm" else "nodes of the op types of placement.op_types"
    listed = ", ".join(repr(n.name) for n in nested[:4]) + (" ..." if len(nested) > 4 else "")
    message = (f"{len(nested)} {what} inside If/Loop/Scan subgraphs or model-local functions ({listed}) "
               "are not supported and stay digital")
    if not found:
        raise ModelError(f"no sites of this config in the main graph; {message}")
    if warn:
        log.warning("%s", message)


def _check_includes(model: ir.Model, config: AnalogConfig) -> None:
    """Every include pattern must select something: a typo must not give a silent 0-site model."""
    if not config.placement.include:
        return
    sites = _sites(model, config.with_placement(include=[]))
    candidates = [s.name for s in sites]
    labels = [label for s in sites for label in (node_labels(s.node, s.name) if s.node is not None else [s.name])]
    for pattern in config.placement.include:
        if not any(re.search(pattern, label) for label in labels):
            listed = ", ".join(candidates[:8]) + (" ..." if len(candidates) > 8 else "")
            raise ModelError(f"--include {pattern!r} matches none of the sites of this config"
                             f"{': ' + listed if candidates else ' (there are none)'}")


def _check_op_types(config: AnalogConfig) -> None:
    """The op types a config lists must be ONNX operators: a misspelled one ('gemm') would select or
    leave out nothing, unseen. (An operator this model lacks is fine: one config serves many models.)"""
    p = config.placement
    listed = [("placement.exclude_op_types", op_type) for op_type in p.exclude_op_types]
    listed += [("placement.op_types", op_type) for op_type in (p.op_types if p.where == "activations" else ())]
    for key, op_type in listed:
        if not onnx.defs.has(op_type):
            operators = [schema.name for schema in onnx.defs.get_all_schemas() if schema.domain == ""]
            raise ConfigError(f"{key}: {op_type!r} is no ONNX operator{arguments.did_you_mean(op_type, operators)}")


def _check_arguments(model: Any, config: Any) -> None:
    arguments.expect(model, (onnx.ModelProto, ir.Model), "model (an onnx.ModelProto or onnx_ir.Model)")
    arguments.expect(config, AnalogConfig, "config (an AnalogConfig: load_preset(NAME) or AnalogConfig.load(FILE))")


def strip_model(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto | ir.Model:
    """Undo ``transform_model``: the original nodes, initializers, inputs and outputs."""
    arguments.expect(model, (onnx.ModelProto, ir.Model), "model")
    work = _working_copy(model)
    if read_analog_metadata(work) is None:
        raise ModelError("model is not an analog-onnx transformed model (no analog_onnx.config metadata)")
    StripAnalogPass()(work)
    return _like(work, model)


# -- files ----------------------------------------------------------------------------------
INLINE_LIMIT = 1 << 30  # bytes of initializers above which a model we write keeps them in a data file
# (protobuf refuses a file over 2 GB; the margin is for what the transform adds)
EXTERNAL_THRESHOLD = 1024  # bytes: larger initializers go to PATH.data; shape constants stay inline,
# where onnxruntime's shape inference must read them (it cannot read external data)
MODEL_FORMAT = "protobuf"  # what we read and write, whatever the file's name (onnx guesses a format from it)


def _checked_file(path: str | Path) -> Path:
    """``path`` as an ONNX file that onnx's checker accepts, or one clear ModelError. The checker
    reads the file by path before Python does, so the two copies are never in memory together."""
    path = readable_file(arguments.expect(path, (str, Path), "path"), "model file")
    try:  # by path: works past protobuf's 2 GB limit; catches truncated files, cycles, dangling inputs,
        onnx.checker.check_model(str(path))  # tensors without data
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{path} is not a valid ONNX model: {first_line(e)}") from None
    return path


def _parsed(path: Path) -> onnx.ModelProto:
    """The file's model with its tensors in data files left there, each checked to fit in its file.
    Read as binary protobuf whatever the name: onnx would read a ``.json`` file as JSON text."""
    try:
        model = onnx.load(str(path), format=MODEL_FORMAT, load_external_data=False)
    except Exception as e:  # protobuf raises several types for truncated or foreign files
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {first_line(e)})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path} is not an ONNX model (no graph)")
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external(tensor, path)
    return model


def _check_external(tensor: onnx.TensorProto, model: Path) -> None:
    """A tensor's bytes must lie within its data file, and a ``length`` must be its shape's size:
    else a pass fails deep in onnx_ir or numpy, or a transform copies the wrong bytes into its output.
    (onnx's checker has made sure the file exists and is a regular file.)"""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    where = f"{model}: tensor {tensor.name}"
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelError(f"{where}: its external data offset and length must be whole numbers") from None
    location = entries.get("location", "")
    needed = _tensor_bytes(tensor)
    shape = f"its shape {list(tensor.dims)} of {ir.DataType(tensor.data_type).name.lower()}"
    if offset < 0:
        raise ModelError(f"{where}: external data offset {offset} is negative")
    if length is not None and length != needed:
        raise ModelError(f"{where}: external data length {length} does not match {shape} ({needed} bytes)")
    available = max((model.parent / location).stat().st_size - offset, 0)
    if needed > available:
        raise ModelError(f"{where}: {location} holds {available} bytes from offset {offset}; {shape} needs {needed}")


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's data, from its shape and type (4-bit types packed two to a byte)."""
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (ValueError, TypeError):  # a type onnx_ir does not know, or strings, which have no fixed size
        raise ModelError(f"tensor {tensor.name}: data type {tensor.data_type} has no fixed size to read "
                         "from a data file") from None
    return math.ceil(math.prod(tensor.dims) * bits / 8)


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file with its external data into memory; any problem is one clear ModelError."""
    return load_model_within(path, math.inf)


def load_model_within(path: str | Path, limit: float) -> onnx.ModelProto | ir.Model:
    """``load_model``'s model, or ``read_model``'s graph (weights left in their data files) when
    the file and the external data its tensors name pass ``limit`` bytes. The file is parsed once."""
    path = _checked_file(path)
    model = _parsed(path)
    external = sum(_tensor_bytes(t) for t in model.graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL)
    if path.stat().st_size + external > limit:
        return _with_files(model, path)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # a data file that changed or became unreadable since it was checked
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {first_line(e)})") from None
    return model


def read_model(path: str | Path) -> ir.Model:
    """Read an ONNX file as an onnx_ir model whose tensors in external data files stay on disk,
    mapped only when a pass reads them (a model of any size costs its graph, not its weights);
    any problem is one clear ModelError."""
    path = _checked_file(path)
    return _with_files(_parsed(path), path)


def _with_files(model: onnx.ModelProto, path: Path) -> ir.Model:
    """``model`` as onnx_ir, its external tensors found beside ``path`` (what ``ir.load`` does)."""
    try:
        work = ir.serde.deserialize_model(model)
    except Exception as e:  # onnx_ir refuses what the checker lets through
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {first_line(e)})") from None
    ir.external_data.set_base_dir(work.graph, path.parent)
    return work


def save_model(model: onnx.ModelProto | ir.Model, path: str | Path, *, force: bool = False,
               inputs: Collection[str | Path] = (), external_data: bool = False, check: bool = False) -> None:
    """Write atomically (:mod:`analog_onnx.files`): never over one of ``inputs``, over an existing
    file only with ``force``; with ``check``, onnx's full check of the written file must pass
    before it replaces anything. With ``external_data`` the initializers above
    ``EXTERNAL_THRESHOLD`` bytes go into ``PATH.data`` beside the model, written one tensor at a
    time (a tensor already in a data file is copied from its mapping), and the two files are
    replaced together; the file loads in plain onnxruntime."""
    path = Path(path)
    if not external_data:
        with atomic_output(path, force=force, inputs=inputs) as scratch:
            onnx.save_model(model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model), scratch,
                            format=MODEL_FORMAT)
            if check:
                _check_written(scratch)
        return
    data = path.with_name(f"{path.name}.data")
    work = model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model)
    with atomic_outputs(data, path, force=force, inputs=inputs) as (data_scratch, model_scratch):
        # the data file is named relative to the model file, never looked up from the current folder
        ir.save(work, model_scratch, format=MODEL_FORMAT, external_data=data.name,
                size_threshold_bytes=EXTERNAL_THRESHOLD)
        data_scratch.touch()  # a model without large initializers writes no data file
        if check:
            _check_written(model_scratch)


def _check_written(path: Path) -> None:
    """onnx's full check (shape inference included) of a file just written, by path (any size)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(f"the written model fails onnx's checker ({first_line(e)}); this is a bug "
                         "of analog-onnx, please report it") from None


def initializer_bytes(model: ir.Model) -> int:
    """The bytes of ``model``'s initializers, subgraphs' included (from their shapes: none is read)."""
    return sum(value.const_value.nbytes for graph in model.graphs() for value in graph.initializers.values()
               if value.const_value is not None)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and attribute tensors, in subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(subgraph)


def external_data_files(path: str | Path) -> list[Path]:
    """The files an ONNX file keeps tensors in, beside it (empty for a self-contained model)."""
    model = _parsed(readable_file(path, "model file"))
    locations = {entry.value for tensor in _tensors(model.graph)
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return sorted(Path(path).parent / location for location in locations)
