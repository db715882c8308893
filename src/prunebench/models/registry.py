"""The model registry: `MODELS`, a `Registry` (key model.name) of factories
(num_classes, input_shape) -> nn.Module, and `get_model`, which validates and builds.

A new model is one module in this package plus one `@register_model("name")` line on its
factory. Factories build freshly initialised models from torch's global RNG, so callers seed
with `torch.manual_seed` and get identical weights for identical seeds.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prunebench.errors import ConfigError
from prunebench.registry import Registry

ModelFactory = Callable[[int, tuple[int, ...]], nn.Module]

MODELS: Registry[ModelFactory] = Registry("model", "model.name")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: `@register_model("resnet20")` on a factory(num_classes, input_shape)."""
    return MODELS.decorator(name)


def model_names() -> list[str]:
    return MODELS.names()


def get_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build model `name` for `num_classes` outputs and inputs of shape (C, H, W)."""
    factory = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"model {name!r} (key model.name) needs a positive integer number of classes, "
            f"got {num_classes!r}"
        )
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ConfigError(
            f"model {name!r} (key model.name) needs an input shape (C, H, W) of positive "
            f"integers, got {input_shape!r}"
        )
    return factory(num_classes, shape)


def shape_error(name: str, input_shape: tuple[int, ...], need: str) -> ConfigError:
    """The error a factory raises for an input shape its architecture cannot take."""
    return ConfigError(
        f"model {name!r} (key model.name) cannot take input shape {tuple(input_shape)}: {need}"
    )
