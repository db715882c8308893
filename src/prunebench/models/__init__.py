"""Model zoo: `get_model(name, num_classes, input_shape)` builds a freshly initialised model.

`MODELS` is the `Registry` of factories (key model.name); `@register_model("name")` adds one.

Every model registers its layers in forward order, so the Conv2d/Linear modules of
`named_modules()` run from the first layer to the classifier, which comes last.
"""

from prunebench.models import conv, digits, lenet, resnet, vgg  # noqa: F401  (registration)
from prunebench.models.registry import (
    MODELS,
    build_from_factory,
    check_model_kwargs,
    get_model,
    model_names,
    register_model,
    resolve_factory,
)

__all__ = ["MODELS", "build_from_factory", "check_model_kwargs", "get_model", "model_names",
           "register_model", "resolve_factory"]
