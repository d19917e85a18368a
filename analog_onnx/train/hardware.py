"""Simulate an ``AnalogConfig`` on a torch model at exactly the places ``transform`` would use.

The placement is not re-implemented here: the model is exported (as ``export.to_onnx`` would
export it, QAT quantizers included), the transform's own ``analog_sites`` picks the sites in
that graph, and each site is mapped back to the module whose call produced the node (the
TorchScript exporter names nodes after the module path). So include/exclude patterns,
excluded op types, keep-first/last-digital and the op-type list mean the same in both worlds.

Each enabled effect (``analog_onnx/effects.py``) attaches its twin, in the registry's order (see
``effect_twins.py``): hooks through ``Hardware.hook``, a layer's weight steps and computation
through ``Hardware.periphery``. Where the transform's noise site reads past the node's own
quantizer (``placement.noise_after_quantizer``) the noise hook runs after the QAT quantizer of the
same module, so QAT must be attached first (``attach_qat`` before ``attach_hardware``).

A site must be the output of a leaf module: a noise site on a functional call inside a larger
module (``torch.relu`` in a ``forward``) cannot be hooked and is reported as an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from analog_onnx.config import AnalogConfig
from analog_onnx.effects import enabled_effects
from analog_onnx.errors import AnalogError
from analog_onnx.train.attach import LAYER_TYPES, NoiseLevel, Periphery, layer_twin
from analog_onnx.train.export import to_onnx
from analog_onnx.train.qat import QatSpec
from analog_onnx.transform import analog_sites


@dataclass(frozen=True)
class TwinSite:
    """One site: the transform's name and op type, and the module that carries it ("" = root)."""

    name: str
    op_type: str
    module: str
    after_quantizer: bool = False  # the noise reads the module's quantized output


class Hardware:
    """An ``AnalogConfig`` attached to a model. ``level.scale`` is the transform's ``noise_scale``."""

    def __init__(self, model: nn.Module, config: AnalogConfig, sites: list[TwinSite], noise_scale: float) -> None:
        self.model, self.config, self.sites = model, config, sites
        self.level = NoiseLevel(scale=noise_scale)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._layers: list[nn.Module] = []
        try:
            for effect in enabled_effects(config):
                effect.attach_twin(self, sites)
        except AnalogError:  # a refused layer: the model is left as it was
            self.remove()
            raise

    def hook(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        """Keep a twin's hook so ``remove`` detaches it."""
        self._handles.append(handle)

    def periphery(self, site: TwinSite) -> Periphery:
        """The twin of a site's analog layer, made on first use (``remove`` detaches it)."""
        module = self.model.get_submodule(site.module)
        twin = layer_twin(module)
        if twin.hardware is None:
            twin.hardware = Periphery(self.level)
            self._layers.append(module)
        return twin.hardware

    def remove(self) -> None:
        """Detach the hardware; the model computes as before (QAT quantizers stay)."""
        for handle in self._handles:
            handle.remove()
        for module in self._layers:
            layer_twin(module).hardware = None
        self._handles, self._layers = [], []

    @contextmanager
    def setting(self, *, scale: float | None = None, active: bool = True) -> Iterator[None]:
        """Temporarily run at another noise scale, or with the hardware off (``active=False``)."""
        saved = (self.level.scale, self.level.active)
        self.level.scale = saved[0] if scale is None else scale
        self.level.active = active
        try:
            yield
        finally:
            self.level.scale, self.level.active = saved


def find_twin_sites(model: nn.Module, config: AnalogConfig, in_shape: tuple[int, ...], *,
                    qat: QatSpec | None = None, tokens: bool = False) -> list[TwinSite]:
    """The transform's sites in the export of ``model`` (whose input is token ids with
    ``tokens``), each mapped to the module that makes it. A layer twin replaces its module's
    whole forward, so an analog layer may be any node of a Linear/Conv module (a Linear on
    [N, T, C] exports as MatMul then Add); a noise hook sees the module's output, so a noise
    site must be its module's last node."""
    exported = to_onnx(model, in_shape, qat=qat, tokens=tokens).model
    scopes: dict[str, list[str]] = {}
    for node in exported.graph.node:
        scopes.setdefault(_scope(node.name), []).append(node.name)
    sites = []
    for site in analog_sites(exported, config):
        if site.op_type == "Input":
            sites.append(TwinSite(site.name, "Input", ""))
            continue
        path = _module_path(model, _scope(site.name))
        module = model.get_submodule(path) if path is not None else None
        is_layer = config.placement.where == "mvm" and type(module) in LAYER_TYPES
        if module is None or list(module.children()) or (scopes[_scope(site.name)][-1] != site.name and not is_layer):
            where = f"module {path!r}" if path is not None else "the model"
            raise AnalogError(f"site {site.name} ({site.op_type}) is not the output of a leaf module of {where}: "
                              "the trainer hooks module outputs; make it an nn.Module called once, or exclude "
                              "it with placement.exclude")
        sites.append(TwinSite(site.name, site.op_type, path, site.value is not site.node.outputs[0]))
    return sites


def attach_hardware(model: nn.Module, config: AnalogConfig, in_shape: tuple[int, ...], *,
                    qat: QatSpec | None = None, noise_scale: float = 1.0, tokens: bool = False) -> Hardware:
    """Simulate ``config`` on ``model`` from now on (undo with ``Hardware.remove``); ``tokens``:
    the model reads int64 token ids of shape ``in_shape``."""
    return Hardware(model, config, find_twin_sites(model, config, in_shape, qat=qat, tokens=tokens), noise_scale)


def _scope(node_name: str) -> str:
    """``/stages/stages.0/conv1/Conv`` -> ``/stages/stages.0/conv1``."""
    return node_name.rsplit("/", 1)[0]


def _module_path(model: nn.Module, scope: str) -> str | None:
    """The dotted module path of a TorchScript export scope, or None.

    The exporter names a child of a container ``<container scope>.<index>`` and any other child
    by its attribute name: ``/stages/stages.0/stages.0.1/conv1`` is ``stages.0.1.conv1``.
    """
    module, parts, previous = model, [], ""
    for component in [c for c in scope.split("/") if c]:
        key = component
        if previous and component.startswith(f"{previous}.") and component[len(previous) + 1:] in module._modules:
            key = component[len(previous) + 1:]
        child = module._modules.get(key)
        if child is None:
            return None
        module, previous = child, component
        parts.append(key)
    return ".".join(parts)
