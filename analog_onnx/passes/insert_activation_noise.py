"""Pass: Gaussian noise on activations ("activations" placement, the Hardening-DNNs model).

Rule:

1. The sites are ``find_sites`` under the config (restricted to ``only`` when given).
2. After each site's tensor (a listed node's first output, or a network input) one
   ``ai.analog.Noise`` node with the config's sigmas reads the ``noise_scale`` and ``seed``
   controls; every consumer, graph outputs included, reads the noisy tensor.
3. Each node draws its own stream: the next free one in the graph, in site order.
"""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx.passes.common import EffectPass, analog_node, control_inputs, next_stream, splice_after
from analog_onnx.passes.names import Names
from analog_onnx.passes.sites import find_sites

CONTROLS = ("noise_scale", "seed")


class InsertActivationNoisePass(EffectPass):
    controls = CONTROLS

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, names, noise = model.graph, Names(model), self.config.noise
        controls = control_inputs(model, CONTROLS)
        sites = find_sites(graph, self.config, self.only)
        first = next_stream(graph)
        for index, site in enumerate(sites):
            attributes = {"sigma_add": noise.additive, "sigma_mul": noise.multiplicative,
                          "relative": int(noise.relative), "stream": first + index}
            node = analog_node("Noise", [site.value, *controls], attributes,
                               name=names.node(f"{site.name}/analog_noise"), role="noise")
            splice_after(graph, site.value, node, names)
        return ir.passes.PassResult(model, modified=bool(sites))
