"""One weight initialisation for every model, drawn from torch's global RNG.

Conv: Kaiming normal, fan_out, ReLU gain (He et al. 2015, as in ResNet practice).
Linear: Kaiming normal, fan_in, ReLU gain. Biases 0; BatchNorm weight 1, bias 0.
Modules are visited in registration order, so the same seed gives the same weights.
"""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            continue
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)
