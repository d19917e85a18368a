"""Commands that read and rewrite models: presets, transform, inspect, strip."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import typer
from rich.table import Table

from analog_onnx import config as cfg
from analog_onnx import transform as tf
from analog_onnx.files import check_output
from analog_onnx.ops import DOMAIN
from analog_onnx.text import console, printable, shown

ConfigOption = typer.Option(None, "--config", "-c", help="Hardware config file (TOML or JSON).")
PresetOption = typer.Option(None, "--preset", "-p", help="Named hardware preset (see `analog-onnx presets`).")
SetOption = typer.Option(None, "--set", help="Override a config key: KEY=VALUE (repeatable), e.g. out_noise=0.04.")


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
    output: Path = typer.Option(None, "--output", "-o", help="Output file [default: MODEL.analog.onnx]."),
    preset: str = PresetOption,
    config_file: Path = ConfigOption,
    overrides: list[str] = SetOption,
    include: list[str] = typer.Option(None, "--include", help="Only nodes whose name matches this regex."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Skip nodes whose name matches this regex."),
    exclude_op_type: list[str] = typer.Option(None, "--exclude-op-type", help="Skip nodes of this op type."),
    keep_first_digital: bool = typer.Option(False, help="Leave the first analog layer digital."),
    keep_last_digital: bool = typer.Option(False, help="Leave the last analog layer digital."),
    activation_matmul: bool = typer.Option(False, help="Also treat MatMuls of two activations as analog."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Insert into MODEL the analog noise and quantization ops that --preset or --config describes."""
    config = cfg.resolve_config(preset, config_file, list(overrides or []))
    p = config.placement
    config = config.with_placement(
        include=p.include + list(include or []), exclude=p.exclude + list(exclude or []),
        exclude_op_types=p.exclude_op_types + list(exclude_op_type or []),
        keep_first_digital=p.keep_first_digital or keep_first_digital,
        keep_last_digital=p.keep_last_digital or keep_last_digital,
        activation_matmul=p.activation_matmul or activation_matmul)
    output = output or model.with_name(model.name.removesuffix(".onnx") + ".analog.onnx")
    source = tf.load_model(model)
    data_files = _check_outputs(output, model, force)
    result = tf.transform_model(source, config)
    _save_checked(result, output, model, data_files, force)
    sites = tf.read_analog_metadata(result).sites
    inserted = Counter(n.op_type for n in result.graph.node if n.domain == DOMAIN)
    summary = ", ".join(f"{count} {op}" for op, count in sorted(inserted.items())) or "no ops (nothing changes numbers)"
    typer.echo(printable(f"{output}: config {config.name}, {len(sites)} sites, inserted {summary}"))


def inspect(
    model: Path = typer.Argument(..., help="A plain or transformed ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a model's analog-capable layers, or how a transformed model was made."""
    proto = tf.load_model(model)
    info = describe(proto)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    out = console()
    out.print(f"[bold]{shown(model)}[/]: opset {info['opset']}, {info['nodes']} nodes")
    if info["transformed"]:
        out.print(f"transformed by analog-onnx {shown(info['version'])} "
                  f"with config [bold]{shown(info['config']['name'])}[/]")
        out.print("inserted ops: " + ", ".join(f"{shown(k)} x{v}" for k, v in info["inserted_ops"].items()))
        out.print(f"noise inputs: {shown(info['inputs'])}; sites: {len(info['sites'])}")
    else:
        table = Table("layer", "op", "weight shape", title="analog-capable layers")
        for layer in info["analog_layers"]:
            table.add_row(shown(layer["name"]), shown(layer["op_type"]), "x".join(map(str, layer["weight_shape"])))
        out.print(table)
    if info["digital"]:
        table = Table("node", "op", "why", title="weight-bearing nodes left digital")
        for node in info["digital"]:
            table.add_row(shown(node["name"]), shown(node["op_type"]), shown(node["reason"]))
        out.print(table)


def describe(model: onnx.ModelProto) -> dict:
    """The facts ``inspect`` prints, as a JSON-ready dict: with ``digital``, every node that reads a
    constant matrix and stays digital (under the model's config when transformed), and why."""
    meta = tf.read_analog_metadata(model)
    info: dict = {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(model.graph.node),
        "transformed": meta is not None,
    }
    if meta is not None:
        inserted = Counter(n.op_type for n in model.graph.node if n.domain == DOMAIN)
        info.update(version=meta.version, config=meta.config.to_dict(), sites=meta.sites,
                    inserted_ops=dict(sorted(inserted.items())),
                    inputs=meta.inputs)
        info["digital"] = _digital(tf.strip_model(model), meta.config)
        return info
    probe = cfg.AnalogConfig.from_dict({"placement": {"where": "mvm"}, "forward": {"out_noise": 1.0}})
    info["analog_layers"] = [
        {"name": s.name, "op_type": s.op_type, "weight_shape": list(s.weight.shape) if s.weight is not None else []}
        for s in tf.analog_sites(model, probe)
    ]
    info["digital"] = _digital(model, probe)
    return info


def _digital(model: onnx.ModelProto, config: cfg.AnalogConfig) -> list[dict]:
    if config.placement.where != "mvm":  # the activations placement perturbs outputs, it maps no weights
        return []
    return [{"name": d.name, "op_type": d.op_type, "reason": d.reason} for d in tf.digital_layers(model, config)]


def strip(
    model: Path = typer.Argument(..., help="A transformed model."),
    output: Path = typer.Option(None, "--output", "-o", help="Output file [default: MODEL.clean.onnx]."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Remove everything analog-onnx inserted: back to the original graph."""
    stem = model.name.removesuffix(".onnx").removesuffix(".analog")
    output = output or model.with_name(stem + ".clean.onnx")
    source = tf.load_model(model)
    data_files = _check_outputs(output, model, force)
    result = tf.strip_model(source)
    _save_checked(result, output, model, data_files, force)
    typer.echo(printable(f"{output}: {len(result.graph.node)} nodes, analog ops removed"))


def _check_outputs(output: Path, model: Path, force: bool) -> list[Path]:
    """Fail before any work when an output (the model, or its .data file when the input keeps its
    tensors outside) would clobber an input or an existing file; returns the input's data files."""
    data_files = tf.external_data_files(model)
    inputs = [model, *data_files]
    check_output(output, force=force, inputs=inputs)
    if data_files:
        check_output(output.with_name(f"{output.name}.data"), force=force, inputs=inputs)
    return data_files


def _save_checked(result: onnx.ModelProto, output: Path, model: Path, data_files: list[Path], force: bool) -> None:
    if not data_files:
        onnx.checker.check_model(result, full_check=True)
    tf.save_model(result, output, force=force, inputs=[model, *data_files], external_data=bool(data_files))


def register(app: typer.Typer) -> None:
    for command in (presets, transform, inspect, strip):
        app.command()(command)
