"""Commands that read and rewrite models: presets, transform, inspect, strip."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from analog_onnx import config as cfg
from analog_onnx.files import check_output, output_file
from analog_onnx.text import console, printable, shown

if TYPE_CHECKING:  # onnx and the transform load when a command that needs them runs: `--help` starts fast
    import onnx
    import onnx_ir as ir

ConfigOption = typer.Option(None, "--config", "-c",
                            help="Hardware config file (TOML or JSON); with --preset, its keys over the preset's.")
PresetOption = typer.Option(None, "--preset", "-p", help="Named hardware preset (see `analog-onnx presets`).")
SetOption = typer.Option(None, "--set", metavar="KEY=VALUE",
                         help="Override a config key: KEY=VALUE (repeatable), e.g. out_noise=0.04.")


def output_option(help: str) -> Any:
    """``--output/-o FILE``, read as typed: ``Path`` would make ``new/`` a file named ``new``."""
    return typer.Option(None, "--output", "-o", parser=output_file, metavar="<path>", help=help)


def presets(name: str = typer.Argument(None, help="Show this preset as TOML.")) -> None:
    """List the hardware presets, or show one as TOML."""
    if name:
        typer.echo(cfg.load_preset(name).to_toml(), nl=False)
        return
    table = Table("preset", "description")
    for preset in cfg.preset_names():
        table.add_row(shown(preset), shown(cfg.load_preset(preset).description))
    console().print(table)


def transform(
    model: Path = typer.Argument(..., help="The ONNX model to make analog."),
    output: Path = output_option("Output file [default: MODEL.analog.onnx]."),
    preset: str = PresetOption,
    config_file: Path = ConfigOption,
    overrides: list[str] = SetOption,
    include: list[str] = typer.Option(None, "--include", metavar="REGEX",
                                      help="Only nodes whose name matches this regex."),
    exclude: list[str] = typer.Option(None, "--exclude", metavar="REGEX",
                                      help="Skip nodes whose name matches this regex."),
    exclude_op_type: list[str] = typer.Option(None, "--exclude-op-type", metavar="OP",
                                      help="Skip nodes of this op type."),
    keep_first_digital: bool = typer.Option(False, help="Leave the first analog layer digital."),
    keep_last_digital: bool = typer.Option(False, help="Leave the last analog layer digital."),
    activation_matmul: bool = typer.Option(False, help="Also treat MatMuls of two activations as analog."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Insert into MODEL the analog noise and quantization ops that --preset or --config describes."""
    from analog_onnx import transform as tf
    from analog_onnx.ops import DOMAIN

    config = cfg.resolve_config(preset, config_file, list(overrides or []))
    p = config.placement
    config = config.with_placement(
        include=p.include + list(include or []), exclude=p.exclude + list(exclude or []),
        exclude_op_types=p.exclude_op_types + list(exclude_op_type or []),
        keep_first_digital=p.keep_first_digital or keep_first_digital,
        keep_last_digital=p.keep_last_digital or keep_last_digital,
        activation_matmul=p.activation_matmul or activation_matmul)
    output = output or model.with_name(model.name.removesuffix(".onnx") + ".analog.onnx")
    source = tf.read_model(model)
    inputs, external = _check_outputs(output, model, source, force, config_file)
    result = tf.transform_model(source, config)
    _save(result, output, inputs, external, force)
    sites = tf.read_analog_metadata(result).sites
    inserted = Counter(n.op_type for n in result.graph if n.domain == DOMAIN)
    summary = ", ".join(f"{count} {op}" for op, count in sorted(inserted.items())) or "no ops (nothing changes numbers)"
    typer.echo(printable(f"{output}: config {config.name}, {len(sites)} sites, inserted {summary}"))


def inspect(
    model: Path = typer.Argument(..., help="A plain or transformed ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a model's analog-capable layers, or how a transformed model was made, layer by layer."""
    from analog_onnx import transform as tf

    info = describe(tf.read_model(model))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    out = console()
    out.print(f"[bold]{shown(model)}[/]: opset {info['opset']}, {info['nodes']} nodes")
    if not info["transformed"]:
        table = Table("layer", "op", "weight shape", title="analog-capable layers")
        for layer in info["analog_layers"]:
            table.add_row(shown(layer["name"]), shown(layer["op_type"]), "x".join(map(str, layer["weight_shape"])))
        out.print(table)
    else:
        config = info["config"]
        out.print(f"transformed by analog-onnx {shown(info['version'])} with config [bold]{shown(config['name'])}[/]: "
                  f"{shown(config['description'])}")
        out.print(f"control inputs: {shown(', '.join(info['inputs'].values()))}")
        table = Table("layer", "analog ops", "weights", "tiles", "DAC/ADC bits", "bounds", "noise", "device",
                      title=f"{len(info['layers'])} analog sites")
        for layer in info["layers"]:
            table.add_row(*(shown(layer[key]) for key in ("name", "ops", "weights", "tiles", "bits", "bounds",
                                                          "noise", "device")))
        out.print(table)
        changed = [f"{section}.{key} = {value}" for section in ("placement", "noise", "forward", "mapping",
                                                                  "weights", "device")
                   for key, value in config[section].items() if value != _DEFAULTS[section][key]]
        out.print("resolved config, keys away from the defaults (`--json`: all): "
                  + shown(", ".join(changed) or "none"))
    if info["digital"]:
        table = Table("node", "op", "why", title="weight-bearing nodes left digital")
        for node in info["digital"]:
            table.add_row(shown(node["name"]), shown(node["op_type"]), shown(node["reason"]))
        out.print(table)


def describe(model: onnx.ModelProto | ir.Model) -> dict:
    """The facts ``inspect`` prints, as a JSON-ready dict (names and shapes: no weight is read): with
    ``digital``, every node that reads a constant matrix and stays digital (under the model's config
    when transformed), and why."""
    import onnx_ir as ir

    from analog_onnx import transform as tf
    from analog_onnx.ops import DOMAIN
    from analog_onnx.ops.nodes import check_nodes

    model = model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model)
    check_nodes(model.graph)  # the rows read our nodes' inputs and attributes as the schema declares them
    meta = tf.read_analog_metadata(model)
    info: dict = {
        "opset": model.opset_imports.get("", model.opset_imports.get("ai.onnx")),
        "nodes": len(model.graph),
        "transformed": meta is not None,
    }
    if meta is not None:
        inserted = Counter(n.op_type for n in model.graph if n.domain == DOMAIN)
        info.update(version=meta.version, config=meta.config.to_dict(), sites=meta.sites,
                    inserted_ops=dict(sorted(inserted.items())), inputs=meta.inputs, layers=analog_layers(model))
        info["digital"] = _digital(tf.strip_model(model), meta.config)
        return info
    probe = cfg.AnalogConfig.from_dict({"placement": {"where": "mvm"}, "forward": {"out_noise": 1.0}})
    standard = tf.standard_model(model)  # once: an old opset's upgrade warns each time it is done
    info["analog_layers"] = [
        {"name": s.name, "op_type": s.op_type, "weight_shape": list(s.weight.shape) if s.weight is not None else []}
        for s in tf.analog_sites(standard, probe)
    ]
    info["digital"] = _digital(standard, probe)
    return info


def analog_layers(model: ir.Model) -> list[dict[str, str]]:
    """One row per analog layer of a transformed model, read from the ops inserted for it (named
    ``LAYER/analog_...``): the ops, the weight shape, the tile split, the converters' bits and
    bounds, the device."""

    from analog_onnx.ops import DOMAIN

    def shape(value: ir.Value | None) -> list[int] | None:
        """A weight's shape, through the Transpose and DeviceWeights the transform puts before a tile."""
        if value is None:
            return None
        node = value.producer()
        if value.is_initializer() or node is None:
            return [int(d) for d in value.shape] if value.shape is not None and value.shape.is_static() else None
        inner = shape(node.inputs[0]) if node.op_type in ("Transpose", "DeviceWeights") else None
        return inner[::-1] if inner and node.op_type == "Transpose" else inner

    layers: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        if node.domain == DOMAIN:
            layers.setdefault((node.name or "").rpartition("/analog")[0] or node.name or "", []).append(node)
    rows = []
    for name, nodes in layers.items():
        attributes = {key: attr.value for node in nodes for key, attr in node.attributes.items()}
        tile = next((n for n in nodes if n.op_type.startswith("AnalogTile")), None)
        weights = shape(tile.inputs[1]) if tile is not None and len(tile.inputs) > 1 else None
        sigmas = [f"{key} {attributes[key]:.3g}" for key in ("out_noise", "w_noise", "sigma_add", "sigma_mul")
                  if isinstance(attributes.get(key), float) and attributes[key]]
        rows.append({
            "name": name, "ops": " + ".join(n.op_type for n in nodes),
            "weights": "x".join(map(str, weights)) if weights else "-",
            "tiles": _tiles(weights, attributes) if weights and len(weights) == 2 else "-",
            "bits": f"{attributes.get('inp_bits', 0) or '-'}/{attributes.get('out_bits', 0) or '-'}",
            "bounds": f"{_bound(attributes.get('inp_bound'))}/{_bound(attributes.get('out_bound'))}",
            "noise": ", ".join(sigmas) or "-",
            "device": attributes["device"] if isinstance(attributes.get("device"), str) else "-",
        })
    return rows


def _tiles(weights: list[int], attributes: dict) -> str:
    """``inputs x outputs`` tiles of a [M, K] weight, with the split of K when it has one."""
    outputs, inputs = weights
    k_tiles = -(-inputs // attributes["max_input_size"]) if attributes.get("max_input_size") else 1
    m_tiles = -(-outputs // attributes["max_output_size"]) if attributes.get("max_output_size") else 1
    sizes = [inputs // k_tiles + (t < inputs % k_tiles) for t in range(k_tiles)]  # as aihwkit splits K
    split = "" if k_tiles == 1 else f" K={'+'.join(map(str, sizes))}" if k_tiles <= 4 else f" K={sizes[0]}+..."
    return f"{k_tiles}x{m_tiles}{split}"


def _bound(value: float | None) -> str:
    return "-" if value is None or value == 0 or value == float("inf") else f"{value:.3g}"


_DEFAULTS = cfg.AnalogConfig().to_dict()


def _digital(model: onnx.ModelProto | ir.Model, config: cfg.AnalogConfig) -> list[dict]:
    from analog_onnx import transform as tf

    if config.placement.where != "mvm":  # the activations placement perturbs outputs, it maps no weights
        return []
    return [{"name": d.name, "op_type": d.op_type, "reason": d.reason} for d in tf.digital_layers(model, config)]


def strip(
    model: Path = typer.Argument(..., help="A transformed model."),
    output: Path = output_option("Output file [default: MODEL.clean.onnx]."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Remove everything analog-onnx inserted: back to the original graph."""
    from analog_onnx import transform as tf

    stem = model.name.removesuffix(".onnx").removesuffix(".analog")
    output = output or model.with_name(stem + ".clean.onnx")
    source = tf.read_model(model)
    inputs, external = _check_outputs(output, model, source, force)
    result = tf.strip_model(source)
    _save(result, output, inputs, external, force)
    typer.echo(printable(f"{output}: {len(result.graph)} nodes, analog ops removed"))


def _check_outputs(output: Path, model: Path, source: ir.Model, force: bool, config_file: Path | None = None
                   ) -> tuple[list[Path], bool]:
    """Fail before any work when an output (the model, or its .data file when the output keeps its
    tensors outside) would clobber an input (the model, its data files, the config) or an existing
    file. Returns the inputs and whether the output keeps its large tensors in a data file: when
    the input does, or when they would not fit in one protobuf file."""
    from analog_onnx import transform as tf

    data_files = tf.external_data_files(model)
    external = bool(data_files) or tf.initializer_bytes(source) > tf.INLINE_LIMIT
    inputs = [model, *data_files, *([config_file] if config_file else [])]
    check_output(output, force=force, inputs=inputs)
    if external:
        check_output(output.with_name(f"{output.name}.data"), force=force, inputs=inputs)
    return inputs, external


def _save(result: ir.Model, output: Path, inputs: list[Path], external: bool, force: bool) -> None:
    from analog_onnx import transform as tf

    tf.save_model(result, output, force=force, inputs=inputs, external_data=external, check=True)


def register(app: typer.Typer) -> None:
    for command in (presets, transform, inspect, strip):
        app.command()(command)
