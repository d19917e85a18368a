"""Pass: record in ``metadata_props`` how the model was made, so the file explains itself.

Rule: ``analog_onnx.config`` (the hardware config as JSON), ``analog_onnx.version`` and
``analog_onnx.sites`` (the sites' names); ``analog_onnx.inputs`` is the controls pass's.
"""

from __future__ import annotations

import json

import onnx_ir as ir

from analog_onnx import __version__
from analog_onnx.config import AnalogConfig
from analog_onnx.passes.common import CONFIG_KEY, SITES_KEY, VERSION_KEY


class WriteMetadataPass(ir.passes.InPlacePass):
    def __init__(self, config: AnalogConfig, site_names: list[str]) -> None:
        super().__init__()
        self.config, self.site_names = config, site_names

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.metadata_props.update({CONFIG_KEY: self.config.to_json(), VERSION_KEY: __version__,
                                     SITES_KEY: json.dumps(self.site_names)})
        return ir.passes.PassResult(model, modified=True)
