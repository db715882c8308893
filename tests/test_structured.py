"""Structured (channel) pruning: shapes, surgery == zeroing, replay, regression vs L1,
allocation, scores and the refusals."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn

from prunebench.models import get_model
from prunebench.structured import (
    allocate,
    bn_scale_scores,
    channel_groups,
    count_channels,
    example_input,
    filter_norm_scores,
    prune_channels,
    regression_prune,
    replay,
    zero_channels,
)
from prunebench.structured.regression import _moments_by_chunks, _moments_by_feature_gram

CIFAR = (3, 32, 32)
SMALL = (3, 16, 16)
TINY = (3, 8, 8)
MNIST = (1, 28, 28)
DIGITS = (1, 8, 8)
CLASSES = 10


def build(name: str, shape: tuple[int, int, int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_model(name, CLASSES, shape)


def half_by_l1(model: nn.Module, shape) -> dict[str, list[int]]:
    return allocate(filter_norm_scores(model, shape), 0.5)


def random_half(model: nn.Module, shape, generator: torch.Generator) -> dict[str, list[int]]:
    """Half of every group's channels, chosen at random (not by any score)."""
    return {
        root: sorted(torch.randperm(size, generator=generator)[: size // 2].tolist())
        for root, size in channel_groups(model, shape).items()
    }


def randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics, BN affine and biases, so that zeroing a channel is not
    already a no-op (fresh models have BN bias 0, mean 0, var 1 and zero biases)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.3 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(0.3 * torch.randn(size, generator=generator))
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


# 1. Shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [
        ("vgg11_bn", CIFAR),
        ("vgg11_bn", SMALL),
        ("resnet20", CIFAR),
        ("resnet18", TINY),
        ("conv2", CIFAR),
        ("conv4", CIFAR),
        ("conv6", CIFAR),
        ("lenet5", MNIST),
        ("lenet_300_100", MNIST),
        ("mlp_digits", DIGITS),
        ("cnn_digits", DIGITS),
    ],
)
def test_layer_mode_halves_every_layer_but_the_classifier(name, shape):
    model = build(name, shape)
    before = count_channels(model)
    classifier = list(before)[-1]
    prune_channels(model, shape, half_by_l1(model, shape))
    expected = {layer: width - round(width / 2) for layer, width in before.items()}
    expected[classifier] = CLASSES
    assert count_channels(model) == expected
    assert outputs(model, torch.randn(2, *shape)).shape == (2, CLASSES)


@pytest.mark.parametrize(
    "name, shape, widths, first_in, first_fc_in",
    [
        ("lenet_300_100", MNIST, [150, 50, 10], 784, 784),  # the input pixels stay
        ("lenet5", MNIST, [3, 8, 60, 42, 10], 1, 8 * 5 * 5),
        ("conv2", CIFAR, [32, 32, 128, 128, 10], 3, 32 * 16 * 16),
        ("conv4", CIFAR, [32, 32, 64, 64, 128, 128, 10], 3, 64 * 8 * 8),
        ("vgg11_bn", CIFAR, [32, 64, 128, 128, 256, 256, 256, 256, 10], 3, 256),
    ],
)
def test_pruned_widths_and_flatten_to_linear_inputs(name, shape, widths, first_in, first_fc_in):
    model = build(name, shape)
    prune_channels(model, shape, half_by_l1(model, shape))
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [getattr(m, "out_channels", None) or m.out_features for m in layers] == widths
    first = layers[0]
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == first_in
    assert next(m for m in layers if isinstance(m, nn.Linear)).in_features == first_fc_in


def test_resnet_residual_groups_shrink_together():
    model = build("resnet20", CIFAR)
    prune_channels(model, CIFAR, half_by_l1(model, CIFAR))
    widths = count_channels(model)
    second_stage = [
        "stages.1.0.conv2",
        "stages.1.0.shortcut.0",
        "stages.1.1.conv2",
        "stages.1.2.conv2",
    ]
    assert {widths[name] for name in second_stage} == {16}
    assert model.stages[1][0].shortcut[1].num_features == 16
    assert model.stages[2][0].conv1.in_channels == 16 and model.fc.in_features == 32


def test_channel_groups_roots_order_and_exclusions():
    model = build("resnet20", SMALL)
    groups = channel_groups(model, SMALL)
    # The stem shares its channels with the first stage's identity shortcuts; a later stage's
    # residual group is rooted at its first block's conv2 (it runs before the 1x1 shortcut).
    assert list(groups)[:5] == [
        "conv1",
        "stages.0.0.conv1",
        "stages.0.1.conv1",
        "stages.0.2.conv1",
        "stages.1.0.conv1",
    ]
    assert groups["conv1"] == 16 and groups["stages.1.0.conv2"] == 32
    assert groups["stages.2.0.conv2"] == 64 and len(groups) == 12
    assert "fc" not in groups and "stages.1.0.shortcut.0" not in groups
    assert "conv1" not in channel_groups(model, SMALL, exclude_first=True)
    conv4 = build("conv4", SMALL)
    assert channel_groups(conv4, SMALL) == {
        "0": 64,
        "2": 64,
        "5": 128,
        "7": 128,
        "11": 256,
        "13": 256,
    }
    assert list(channel_groups(conv4, SMALL, exclude_first=True)) == ["2", "5", "7", "11", "13"]


def test_example_input_and_modes_are_kept():
    assert torch.equal(example_input(DIGITS), torch.zeros(1, *DIGITS))
    model = build("vgg11_bn", TINY).train()
    stats = model[1].running_mean.clone()
    channel_groups(model, TINY)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, stats)  # tracing ran in eval mode


# 2. Surgery equals zeroing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [("vgg11_bn", SMALL), ("resnet20", SMALL), ("conv4", SMALL), ("lenet_300_100", MNIST)],
)
def test_surgery_equals_zeroing_before_retraining(name, shape):
    generator = torch.Generator().manual_seed(1)
    model = build(name, shape)
    randomise(model, generator)
    pruned = random_half(model, shape, generator)
    inputs = torch.randn(4, *shape, generator=generator)
    dense = outputs(model, inputs)
    zeroed = copy.deepcopy(model)
    zero_channels(zeroed, shape, pruned)
    assert count_channels(zeroed) == count_channels(model)
    prune_channels(model, shape, pruned)
    expected = outputs(zeroed, inputs)
    assert not torch.allclose(expected, dense, atol=1e-3)  # the channels did matter
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-4)


# 3. Replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("resnet20", SMALL), ("conv4", SMALL)])
def test_replay_rebuilds_a_saved_run(name, shape):
    model = build(name, shape)
    edits = prune_channels(model, shape, allocate(filter_norm_scores(model, shape), 0.25))
    # A second round indexes the already-shrunk groups: replay must apply edits in order.
    edits += prune_channels(model, shape, allocate(filter_norm_scores(model, shape), 0.5))
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    recorded = json.loads(json.dumps(edits))

    fresh = replay(build(name, shape, seed=7), shape, recorded)
    saved.seek(0)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    inputs = torch.randn(3, *shape)
    assert count_channels(fresh) == count_channels(model)
    assert torch.equal(outputs(fresh, inputs), outputs(model, inputs))


# 4. Regression (He et al. 2017) ---------------------------------------------------------------


def random_batches(shape, batches: int, size: int, seed: int) -> list[tuple[torch.Tensor, None]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=generator), None) for _ in range(batches)]


def same_counts_by_l1(model: nn.Module, shape, edits) -> None:
    """Prune as many channels of the same groups as `edits` did, chosen by L1 filter norm."""
    scores = filter_norm_scores(model, shape)
    plan = {}
    for edit in edits:
        order = torch.sort(scores[edit["layer"]], stable=True).indices
        plan[edit["layer"]] = order[: len(edit["pruned"])].tolist()
    prune_channels(model, shape, plan)


@pytest.mark.parametrize("name, shape", [("cnn_digits", DIGITS), ("lenet5", MNIST)])
def test_regression_reconstructs_better_than_l1_on_held_out_inputs(name, shape):
    model = build(name, shape).eval()
    regression, l1 = copy.deepcopy(model), copy.deepcopy(model)
    edits = regression_prune(regression, shape, random_batches(shape, 4, 96, seed=1), 0.5)
    same_counts_by_l1(l1, shape, edits)
    assert count_channels(l1) == count_channels(regression)
    # Every group is pruned and the classifier is the last group's consumer, so the logits
    # are that consumer's output.
    held_out = torch.randn(256, *shape, generator=torch.Generator().manual_seed(2))
    reference = outputs(model, held_out)
    regression_error = (outputs(regression, held_out) - reference).pow(2).mean()
    l1_error = (outputs(l1, held_out) - reference).pow(2).mean()
    assert regression_error < 0.5 * l1_error


def test_regression_finds_channels_that_carry_no_signal():
    """Half the hidden neurons have the largest weights but the next layer ignores them.
    The LASSO must drop exactly those (L1 drops the others) and lose nothing."""
    model = build("mlp_digits", DIGITS).eval()
    with torch.no_grad():
        model[1].weight[:64] *= 3
        model[3].weight[:, :64] = 0
    regression, l1 = copy.deepcopy(model), copy.deepcopy(model)
    edits = regression_prune(regression, DIGITS, random_batches(DIGITS, 3, 100, seed=1), 0.5)
    assert edits[0] == {"layer": "1", "pruned": list(range(64))}
    l1_edits = prune_channels(l1, DIGITS, {"1": half_by_l1(l1, DIGITS)["1"]})
    assert l1_edits[0]["pruned"] == list(range(64, 128))

    def hidden(network, inputs):  # the consumer's pre-activation output
        with torch.no_grad():
            return network[3](network[2](network[1](network[0](inputs))))

    held_out = torch.randn(200, *DIGITS, generator=torch.Generator().manual_seed(2))
    kept_outputs = sorted(set(range(64)) - set(edits[1]["pruned"]))
    reference = hidden(model, held_out)
    scale = reference.pow(2).mean()
    assert (hidden(regression, held_out) - reference[:, kept_outputs]).pow(2).mean() < 1e-8 * scale
    assert (hidden(l1, held_out) - reference).pow(2).mean() > 0.1 * scale


def test_regression_refit_is_lossless_when_kept_channels_span_the_pruned_ones():
    """Without its ReLUs the MLP is affine in its 8 input pixels, so any 9 or more kept
    channels (with the bias) carry everything the pruned ones did. Choosing channels cannot
    make up for a lost contribution; the least-squares refit of each consumer must, so the
    logits survive halving both hidden layers."""
    shape = (1, 2, 4)
    model = build("mlp_digits", shape)
    model[2], model[4] = nn.Identity(), nn.Identity()
    pruned = copy.deepcopy(model)
    edits = regression_prune(pruned, shape, random_batches(shape, 2, 50, seed=1), 0.5)
    assert [len(edit["pruned"]) for edit in edits] == [64, 32]
    held_out = torch.randn(100, *shape, generator=torch.Generator().manual_seed(2))
    reference = outputs(model, held_out)
    error = (outputs(pruned, held_out) - reference).pow(2).mean()
    assert error < 1e-10 * reference.pow(2).mean()


def test_regression_skips_residual_groups_and_is_deterministic():
    model = build("resnet20", SMALL)
    data = random_batches(SMALL, 2, 8, seed=3)
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    edits = regression_prune(first, SMALL, data, 0.5, generator=torch.Generator().manual_seed(4))
    again = regression_prune(second, SMALL, data, 0.5, generator=torch.Generator().manual_seed(4))
    assert edits == again
    assert [edit["layer"] for edit in edits] == [
        f"stages.{stage}.{block}.conv1" for stage in range(3) for block in range(3)
    ]
    widths, original = count_channels(first), count_channels(model)
    assert widths["stages.1.0.conv1"] == 16 and widths["stages.1.0.conv2"] == 32
    assert widths["conv1"] == original["conv1"]
    assert torch.equal(outputs(first, data[0][0]), outputs(second, data[0][0]))


def test_regression_respects_max_samples_and_exclude_first():
    model = build("cnn_digits", DIGITS)
    data = random_batches(DIGITS, 3, 40, seed=5)
    few = copy.deepcopy(model)
    edits = regression_prune(model, DIGITS, data, 0.5, max_samples=40, exclude_first=True)
    assert [edit["layer"] for edit in edits] == ["2", "5", "8"]
    # Only the first batch is read: the later batches cannot change the result.
    assert regression_prune(few, DIGITS, data[:1], 0.5, max_samples=40, exclude_first=True) == edits


def test_both_ways_of_summing_channel_contributions_agree():
    generator = torch.Generator().manual_seed(0)
    rows, channels, per_channel, outputs_ = 30, 5, 4, 6
    inputs = torch.randn(rows, channels, per_channel, generator=generator, dtype=torch.float64)
    weight = torch.randn(outputs_, channels, per_channel, generator=generator, dtype=torch.float64)
    target = torch.randn(rows, outputs_, generator=generator, dtype=torch.float64)
    contributions = torch.einsum("sck,nck->csn", inputs, weight).reshape(channels, -1)
    gram = contributions @ contributions.T
    cross = contributions @ target.reshape(-1)
    for moments in (_moments_by_chunks, _moments_by_feature_gram):
        got_gram, got_cross = moments(inputs, weight, target)
        torch.testing.assert_close(got_gram, gram)
        torch.testing.assert_close(got_cross, cross)


# 5. Allocation -------------------------------------------------------------------------------


def test_allocate_layer_mode_counts_and_min_keep():
    scores = {
        "a": torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 0.5]),
        "b": torch.tensor([3.0, 1.0, 2.0, 0.0]),
        "c": torch.tensor([1.0]),
    }
    assert allocate(scores, 0.5) == {"a": [1, 2, 3, 4, 9], "b": [1, 3], "c": []}
    assert allocate(scores, 1.0, min_keep=2) == {
        "a": [0, 1, 2, 3, 4, 7, 8, 9],
        "b": [1, 3],
        "c": [],
    }


def test_allocate_ties_go_to_the_lower_index():
    flat = {"a": torch.ones(6), "b": torch.ones(4)}
    assert allocate(flat, 0.5) == {"a": [0, 1, 2], "b": [0, 1]}
    assert allocate(flat, 0.5, mode="global") == {"a": [0, 1, 2, 3, 4], "b": []}
    # Across groups, a tie goes to the group listed first.
    reordered = {"b": torch.ones(4), "a": torch.ones(6)}
    assert allocate(reordered, 0.5, mode="global") == {"b": [0, 1, 2], "a": [0, 1]}


def test_allocate_global_normalises_by_group_mean_and_hits_the_total():
    scores = {
        "wide": 100 * torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "narrow": torch.tensor([4.0, 3.0, 2.0, 1.0]),
    }
    # Relative to their means the groups tie; raw scores strip "narrow" down to min_keep first.
    assert allocate(scores, 0.5, mode="global") == {"wide": [0, 1], "narrow": [2, 3]}
    raw = allocate(scores, 0.5, mode="global", normalise=False)
    assert raw == {"wide": [0], "narrow": [1, 2, 3]}
    uneven = {"a": torch.arange(1.0, 8.0), "b": torch.tensor([1.0, 1.0, 9.0]), "c": torch.ones(2)}
    # Relative scores: a 0.25, 0.5, 0.75, ...; b 0.27, 0.27, 2.45; c 1, 1. Five go (0.4 * 12).
    assert allocate(uneven, 0.4, mode="global") == {"a": [0, 1, 2], "b": [0, 1], "c": []}


def test_allocate_global_caps_stop_short_of_the_target():
    scores = {"a": torch.arange(1.0, 5.0), "b": torch.arange(1.0, 3.0)}
    plan = allocate(scores, 1.0, mode="global", min_keep=1)
    assert {root: len(v) for root, v in plan.items()} == {"a": 3, "b": 1}
    with pytest.raises(ValueError, match="min_keep"):
        allocate(scores, 0.5, min_keep=0)
    with pytest.raises(ValueError, match="mode"):
        allocate(scores, 0.5, mode="per-layer")
    with pytest.raises(ValueError, match=">= 0"):
        allocate({"a": torch.tensor([-1.0, 2.0])}, 0.5, mode="global")


# 6. Scores --------------------------------------------------------------------------------


def test_filter_norm_scores_match_a_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    )
    shape = (2, 6, 6)
    first, second, hidden = (model[i].weight.detach() for i in (0, 2, 5))
    l1 = filter_norm_scores(model, shape)
    assert list(l1) == ["0", "2", "5"]
    for root, weight in (("0", first), ("2", second), ("5", hidden)):
        hand = torch.tensor([float(sum(abs(w) for w in row.flatten())) for row in weight])
        torch.testing.assert_close(l1[root], hand)
    l2 = filter_norm_scores(model, shape, p=2, exclude_first=True)
    assert list(l2) == ["2", "5"]
    torch.testing.assert_close(l2["2"], torch.stack([row.pow(2).sum().sqrt() for row in second]))


def test_coupled_group_scores_sum_over_all_producers_and_bns():
    model = build("resnet20", SMALL)
    randomise(model, torch.Generator().manual_seed(0))
    producers = [model.conv1] + [block.conv2 for block in model.stages[0]]
    norms = [model.bn1] + [block.bn2 for block in model.stages[0]]
    l1 = filter_norm_scores(model, SMALL)["conv1"]
    torch.testing.assert_close(
        l1, sum(p.weight.detach().abs().sum(dim=(1, 2, 3)) for p in producers)
    )
    gamma = bn_scale_scores(model, SMALL)
    torch.testing.assert_close(gamma["conv1"], sum(bn.weight.detach().abs() for bn in norms))
    torch.testing.assert_close(
        gamma["stages.0.0.conv1"], model.stages[0][0].bn1.weight.detach().abs()
    )


def test_bn_scale_scores_needs_batchnorm():
    with pytest.raises(ValueError, match="Sequential.*BatchNorm"):
        bn_scale_scores(build("conv4", SMALL), SMALL)


def test_bn_scale_scores_rank_only_the_groups_followed_by_batchnorm():
    # cnn_digits_bn: three conv groups with BN, one hidden linear layer without.
    model = get_model("cnn_digits_bn", 10, (1, 8, 8))
    scores = bn_scale_scores(model, (1, 8, 8))
    assert sorted(scores) == ["0", "3", "7"]
    assert "11" in channel_groups(model, (1, 8, 8))


# 7. Refusals --------------------------------------------------------------------------------


def test_refuses_to_empty_a_group_and_changes_nothing():
    model = build("conv4", SMALL)
    before = count_channels(model)
    with pytest.raises(ValueError, match="refusing to prune all 64 channels of group '2'"):
        prune_channels(model, SMALL, {"0": [0, 1], "2": list(range(64))})
    assert count_channels(model) == before  # "0" was not pruned either
    zero_channels(model, SMALL, {"2": list(range(64))})  # zeroing keeps shapes, so it may
    assert count_channels(model) == before


def test_rejects_names_and_indices_that_are_not_a_group():
    model = build("resnet20", SMALL)
    with pytest.raises(ValueError, match="classifier"):
        prune_channels(model, SMALL, {"fc": [0]})
    with pytest.raises(ValueError, match="belong to group 'stages.1.0.conv2'"):
        prune_channels(model, SMALL, {"stages.1.0.shortcut.0": [0]})
    with pytest.raises(ValueError, match="out of range"):
        prune_channels(model, SMALL, {"conv1": [16]})
    with pytest.raises(ValueError, match="repeated"):
        prune_channels(model, SMALL, {"conv1": [1, 1]})
    with pytest.raises(ValueError, match="refusing"):
        replay(build("resnet20", SMALL), SMALL, [{"layer": "conv1", "pruned": list(range(16))}])
