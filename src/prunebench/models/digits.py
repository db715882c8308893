"""Small networks for the 8x8 scikit-learn digits (Alpaydin & Kaynak 1998, UCI "Optical
Recognition of Handwritten Digits"): fast enough to run the whole benchmark on a laptop CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from prunebench.errors import ConfigError
from prunebench.models.init import init_weights
from prunebench.models.lenet import mlp
from prunebench.models.registry import register_model, shape_error


@register_model("mlp_digits")
def mlp_digits(num_classes: int, input_shape: tuple[int, ...],
               hidden: Sequence[int] = (128, 64)) -> nn.Module:
    """Flatten -> 128 -> 64 -> classes, ReLU (17,226 parameters on digits, 10 classes);
    `hidden` (`model.kwargs`) sets the hidden widths."""
    if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                             for h in hidden):
        raise ConfigError(f"model 'mlp_digits' (key model.kwargs.hidden) needs a non-empty "
                          f"list of positive widths, got {hidden!r}")
    return mlp(input_shape, tuple(hidden), num_classes)


def _cnn(name: str, num_classes: int, input_shape: tuple[int, ...], batch_norm: bool) -> nn.Module:
    """conv 16, conv 32, maxpool, conv 32 (3x3, padding 1, ReLU; BatchNorm before each ReLU
    if asked), then fc 64 and classes."""
    channels, height, width = input_shape
    if min(height, width) < 2:
        raise shape_error(name, input_shape, "needs H, W >= 2 (one max-pool)")

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
        return [nn.Conv2d(c_in, c_out, 3, padding=1), *norm, nn.ReLU()]

    model = nn.Sequential(
        *conv(channels, 16),
        *conv(16, 32),
        nn.MaxPool2d(2),
        *conv(32, 32),
        nn.Flatten(),
        nn.Linear(32 * (height // 2) * (width // 2), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
    init_weights(model)
    return model


@register_model("cnn_digits")
def cnn_digits(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Convs and a hidden fc layer give both layer kinds to prune (47,530 parameters on
    digits)."""
    return _cnn("cnn_digits", num_classes, input_shape, batch_norm=False)


@register_model("cnn_digits_bn")
def cnn_digits_bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """`cnn_digits` with BatchNorm after every conv (47,690 parameters on digits): the
    default study's model, so that network slimming (which prunes by BatchNorm scale) runs
    beside every other method."""
    return _cnn("cnn_digits_bn", num_classes, input_shape, batch_norm=True)
