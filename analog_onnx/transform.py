"""Public API of the graph transform: make an ONNX model analog, inspect it, undo it.

``transform_model`` runs one pass manager: the control inputs, the pass of each enabled effect
(``analog_onnx/effects.py``), our function bodies and the metadata (one rule per file). Model
files are read and written by ``load_model``/``save_model``, which turn every reading problem
into one clear :class:`~analog_onnx.errors.ModelError` and never leave half-written output.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from analog_onnx.config import AnalogConfig
from analog_onnx.effects import enabled_effects
from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN
from analog_onnx.passes.add_controls import AddControlInputsPass
from analog_onnx.passes.add_functions import AddAnalogFunctionsPass
from analog_onnx.passes.common import CONFIG_KEY, INPUTS_KEY, SITES_KEY, VERSION_KEY
from analog_onnx.passes.sites import Site, find_sites
from analog_onnx.passes.strip_analog import StripAnalogPass
from analog_onnx.passes.write_metadata import WriteMetadataPass

MIN_OPSET = 13


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
    return AnalogMetadata(
        config=AnalogConfig.from_dict(json.loads(props[CONFIG_KEY])),
        version=props.get(VERSION_KEY, ""),
        inputs={"noise_scale": "noise_scale", "seed": "seed", **json.loads(props.get(INPUTS_KEY, "{}"))},
        sites=json.loads(props.get(SITES_KEY, "[]")),
    )


def _as_ir(model: onnx.ModelProto | ir.Model) -> ir.Model:
    return model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model)


def _working_copy(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """An IR model the passes may change. Deserializing a proto already builds new objects (tensor
    data is shared, never written), so only an IR model needs a copy; no 2 GB protobuf round trip."""
    if isinstance(model, ir.Model):
        return ir.serde.deserialize_model(ir.serde.serialize_model(model))
    return ir.serde.deserialize_model(model)


def _like(result: ir.Model, original: onnx.ModelProto | ir.Model) -> onnx.ModelProto | ir.Model:
    return result if isinstance(original, ir.Model) else ir.serde.serialize_model(result)


def _check_transformable(model: ir.Model) -> None:
    if read_analog_metadata(model) is not None or DOMAIN in model.opset_imports:
        raise ModelError("model is already transformed; run `analog-onnx strip` first")
    opset = model.opset_imports.get("")
    if opset is None or opset < MIN_OPSET:
        raise ModelError(f"model uses opset {opset}; analog-onnx needs {MIN_OPSET} or newer "
                         f"(convert it with onnx.version_converter.convert_version(model, {MIN_OPSET}))")


def analog_sites(model: onnx.ModelProto | ir.Model, config: AnalogConfig) -> list[Site]:
    """The places ``transform_model`` would touch under ``config``, in graph order (none when
    the config enables no effect)."""
    model = _as_ir(model)
    if not enabled_effects(config):
        return []
    return find_sites(model.graph, config)


def transform_model(model: onnx.ModelProto | ir.Model, config: AnalogConfig, *,
                    sites: Collection[str] | None = None) -> onnx.ModelProto | ir.Model:
    """Insert the analog ops that ``config`` describes; ``sites`` restricts them to these names.

    Returns the same kind of object it was given (a new one; the input is not changed).
    """
    work = _working_copy(model)
    _check_transformable(work)
    chosen = [s.name for s in analog_sites(work, config)]
    if sites is not None:
        unknown = set(sites) - set(chosen)
        if unknown:
            raise ModelError(f"unknown site(s): {', '.join(sorted(unknown))}")
        chosen = [name for name in chosen if name in set(sites)]
    only = None if sites is None else frozenset(sites)
    ir.passes.PassManager([
        AddControlInputsPass(config.t_inference),
        *(effect.make_pass(config, only) for effect in enabled_effects(config)),
        AddAnalogFunctionsPass(),
        WriteMetadataPass(config, chosen),
    ])(work)
    return _like(work, model)


def strip_model(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto | ir.Model:
    """Undo ``transform_model``: the original nodes, initializers, inputs and outputs."""
    work = _working_copy(model)
    if read_analog_metadata(work) is None:
        raise ModelError("model is not an analog-onnx transformed model (no analog_onnx.config metadata)")
    StripAnalogPass()(work)
    return _like(work, model)


# -- files ----------------------------------------------------------------------------------
def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file (with its external data); any problem is one clear ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no such model file: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises several types for truncated or foreign files
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path} is not an ONNX model (no graph)")
    return model


def save_model(model: onnx.ModelProto, path: str | Path, *, force: bool = False,
               inputs: Collection[str | Path] = (), external_data: bool = False) -> None:
    """Write atomically: a temp file in the same folder, renamed over the target at the end.

    Refuses to overwrite any of ``inputs``, or an existing file without ``force``.
    """
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
            raise ModelError(f"output {path} is the input; choose another -o")
    if path.exists() and not force:
        raise ModelError(f"output {path} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise ModelError(f"output folder {path.parent} does not exist")
    data_name = f"{path.name}.data"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if external_data:
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{Path(tmp).name}.data", size_threshold=1024)
            os.replace(f"{tmp}.data", path.parent / data_name)
            _relocate_external_data(tmp, data_name)
        else:
            onnx.save_model(model, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs get the usual mode
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, f"{tmp}.data"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _relocate_external_data(model_path: str, data_name: str) -> None:
    """Point the saved model's external tensors at the renamed data file."""
    model = onnx.load(model_path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    onnx.save_model(model, model_path)


def has_external_data(path: str | Path) -> bool:
    """Whether the file keeps tensors outside the .onnx file (then so does our output)."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
