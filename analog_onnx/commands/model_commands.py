"""Commands that read and rewrite models: presets, transform, inspect, strip."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import typer
from rich.console import Console
from rich.table import Table

from analog_onnx import config as cfg
from analog_onnx import transform as tf
from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN

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
        table.add_row(preset, cfg.load_preset(preset).description)
    Console().print(table)


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
    """Insert analog noise and quantization ops into MODEL."""
    config = cfg.resolve_config(preset, config_file, list(overrides or []))
    placement = config.placement
    placement.include += include or []
    placement.exclude += exclude or []
    placement.exclude_op_types += exclude_op_type or []
    placement.keep_first_digital |= keep_first_digital
    placement.keep_last_digital |= keep_last_digital
    placement.activation_matmul |= activation_matmul
    config.validate()
    output = output or model.with_name(model.name.removesuffix(".onnx") + ".analog.onnx")
    _refuse_existing(output, model, force)
    source = tf.load_model(model)
    result = tf.transform_model(source, config)
    _save_checked(result, output, model, force)
    sites = tf.read_analog_metadata(result).sites
    inserted = Counter(n.op_type for n in result.graph.node if n.domain == DOMAIN)
    summary = ", ".join(f"{count} {op}" for op, count in sorted(inserted.items())) or "no ops (nothing changes numbers)"
    typer.echo(f"{output}: preset {config.name}, {len(sites)} sites, inserted {summary}")


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
    console = Console()
    console.print(f"[bold]{model}[/]: opset {info['opset']}, {info['nodes']} nodes")
    if info["transformed"]:
        console.print(f"transformed by analog-onnx {info['version']} with config [bold]{info['config']['name']}[/]")
        console.print("inserted ops: " + ", ".join(f"{k} x{v}" for k, v in info["inserted_ops"].items()))
        console.print(f"noise inputs: {info['inputs']}; sites: {len(info['sites'])}")
        return
    table = Table("layer", "op", "weight shape", title="analog-capable layers")
    for layer in info["analog_layers"]:
        table.add_row(layer["name"], layer["op_type"], "x".join(map(str, layer["weight_shape"])))
    console.print(table)


def describe(model: onnx.ModelProto) -> dict:
    """The facts ``inspect`` prints, as a JSON-ready dict."""
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
        return info
    probe = cfg.AnalogConfig.from_dict({"placement": {"where": "mvm"}, "forward": {"out_noise": 1.0}})
    info["analog_layers"] = [
        {"name": s.name, "op_type": s.op_type, "weight_shape": list(s.weight.shape) if s.weight is not None else []}
        for s in tf.analog_sites(model, probe)
    ]
    return info


def strip(
    model: Path = typer.Argument(..., help="A transformed model."),
    output: Path = typer.Option(None, "--output", "-o", help="Output file [default: MODEL.clean.onnx]."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Remove everything analog-onnx inserted: back to the original graph."""
    stem = model.name.removesuffix(".onnx").removesuffix(".analog")
    output = output or model.with_name(stem + ".clean.onnx")
    _refuse_existing(output, model, force)
    result = tf.strip_model(tf.load_model(model))
    _save_checked(result, output, model, force)
    typer.echo(f"{output}: {len(result.graph.node)} nodes, analog ops removed")


def _refuse_existing(output: Path, model: Path, force: bool) -> None:
    """Fail before any work when the output would clobber the input or an existing file."""
    if output.exists() and model.exists() and output.resolve() == model.resolve():
        raise ModelError(f"output {output} is the input; choose another -o")
    if output.exists() and not force:
        raise ModelError(f"output {output} exists; pass --force to overwrite it")


def _save_checked(result: onnx.ModelProto, output: Path, model: Path, force: bool) -> None:
    external = tf.has_external_data(model)
    if not external:
        onnx.checker.check_model(result, full_check=True)
    tf.save_model(result, output, force=force, inputs=[model], external_data=external)


def register(app: typer.Typer) -> None:
    for command in (presets, transform, inspect, strip):
        app.command()(command)
