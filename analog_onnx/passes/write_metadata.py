"""Pass: record in ``metadata_props`` how the model was made, so the file explains itself.

Rule: ``analog_onnx.config`` (the hardware config as JSON), ``analog_onnx.version`` and
``analog_onnx.sites``: the names of the sites ``find_sites`` finds under the config (restricted to
``only`` when given; none when the config enables no effect), which the effects' passes leave
sites; ``analog_onnx.inputs`` is the controls pass's.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import onnx_ir as ir

from analog_onnx import __version__
from analog_onnx.config import AnalogConfig
from analog_onnx.effects import enabled_effects
from analog_onnx.passes.common import CONFIG_KEY, SITES_KEY, VERSION_KEY
from analog_onnx.passes.sites import find_sites


class WriteMetadataPass(ir.passes.InPlacePass):
    def __init__(self, config: AnalogConfig, only: Collection[str] | None = None) -> None:
        super().__init__()
        self.config, self.only = config, only

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        sites = find_sites(model.graph, self.config, self.only) if enabled_effects(self.config) else []
        model.metadata_props.update({CONFIG_KEY: self.config.to_json(), VERSION_KEY: __version__,
                                     SITES_KEY: json.dumps([site.name for site in sites])})
        return ir.passes.PassResult(model, modified=True)
