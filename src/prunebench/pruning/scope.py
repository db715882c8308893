"""Which weights a method may prune.

Conv and linear weights by default; biases and BatchNorm never (they are a tiny fraction of
the parameters and pruning them changes what the layer computes, not just how many weights it
has). The first and last layer can be excluded, as many papers do.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Scope:
    exclude_first: bool = False
    exclude_last: bool = False

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """Prunable modules by name, in registration (= forward) order."""
        layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
        names = list(layers)
        if self.exclude_first and names:
            layers.pop(names[0])
        if self.exclude_last and len(names) > 1:
            layers.pop(names[-1])
        return layers

    def params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Prunable weight tensors by parameter name (`<module>.weight`)."""
        return {f"{n}.weight" if n else "weight": m.weight for n, m in self.layers(model).items()}
