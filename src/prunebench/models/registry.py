"""The model registry: `MODELS`, a `Registry` (key model.name) of factories
(num_classes, input_shape) -> nn.Module, and `get_model`, which validates and builds.

A new model is one module in this package plus one `@register_model("name")` line on its
factory. Factories build freshly initialised models from torch's global RNG, so callers seed
with `torch.manual_seed` and get identical weights for identical seeds.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

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


def _check_classes_and_shape(what: str, num_classes: int, input_shape, rank: int | None):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"model {what} (key model.name) needs a positive integer number of classes, "
            f"got {num_classes!r}"
        )
    shape = tuple(input_shape)
    if (rank is not None and len(shape) != rank) or not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        need = "(C, H, W)" if rank == 3 else "(one example's dimensions)"
        raise ConfigError(
            f"model {what} (key model.name) needs an input shape {need} of positive "
            f"integers, got {input_shape!r}"
        )
    return shape


def get_model(name: str, num_classes: int, input_shape: tuple[int, ...],
              kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build model `name` for `num_classes` outputs and inputs of `input_shape`, with the
    study's `model.kwargs`. The package's own models take images (C, H, W); a plugin's model
    takes whatever rank its data has (a sequence model, say)."""
    factory = MODELS.get(name)
    rank = 3 if MODELS.origin(name) is None else None
    shape = _check_classes_and_shape(repr(name), num_classes, input_shape, rank)
    return factory(num_classes, shape, **dict(kwargs or {}))


def resolve_factory(spec: str, key: str = "model.factory") -> Callable[..., nn.Module]:
    """The function `package.module:function` names (the user's own file, torchvision, timm,
    ...), imported now so that a missing package or name is one clear line."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"{key} must look like 'package.module:function', got {spec!r}")
    module_name, attr = spec.split(":")
    from prunebench.project import project_importable

    project_importable()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{key} {spec!r}: cannot import {module_name!r} ({err}); install it "
                          "or put the module inside the project") from None
    except Exception as err:  # noqa: BLE001 (the user's module failed on import)
        raise ConfigError(f"{key} {spec!r}: importing {module_name!r} failed: "
                          f"{type(err).__name__}: {err}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"{key} {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"{key} {spec!r} is not callable")
    return fn


def _factory_call(fn: Callable[..., nn.Module], kwargs: Mapping[str, Any], num_classes: int,
                  input_shape: tuple[int, ...]) -> dict[str, Any]:
    """A factory's arguments: the study's kwargs, plus num_classes and input_shape where its
    signature names them and the kwargs do not set them (num_classes also where it takes
    **kwargs, as torchvision's and timm's factories do)."""
    call = dict(kwargs)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return call
    for name, value in (("num_classes", num_classes), ("input_shape", tuple(input_shape))):
        if name in params and name not in call:
            call[name] = value
    # torchvision's and timm's factories take num_classes through **kwargs.
    if "num_classes" not in call and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        call["num_classes"] = num_classes
    return call


def build_from_factory(spec: str, num_classes: int, input_shape: tuple[int, ...],
                       kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """The model a `model.factory` makes, checked to be an nn.Module."""
    fn = resolve_factory(spec)
    shape = _check_classes_and_shape(repr(spec), num_classes, input_shape, None)
    model = fn(**_factory_call(fn, kwargs or {}, num_classes, shape))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory {spec!r} returned {type(model).__name__}, not an "
                          "nn.Module")
    return model


def check_model_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], key: str, *,
                       factory: str | None = None) -> None:
    """Refuse kwargs the model's factory does not take, at parse time."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        if factory is None:
            signature.bind(1, (1,), **kwargs)
        else:
            signature.bind(**_factory_call(fn, kwargs, 1, (1,)))
    except TypeError as err:
        raise ConfigError(f"{key}: {err} (the factory's parameters: "
                          f"{', '.join(signature.parameters)})") from None


def shape_error(name: str, input_shape: tuple[int, ...], need: str) -> ConfigError:
    """The error a factory raises for an input shape its architecture cannot take."""
    return ConfigError(
        f"model {name!r} (key model.name) cannot take input shape {tuple(input_shape)}: {need}"
    )
