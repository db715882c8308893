"""Wanda and N:M semi-structured masks."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunebench.errors import ConfigError
from prunebench.pruning import METHODS, PruneContext
from prunebench.pruning.mask import keep_count
from prunebench.pruning.nm import is_nm_sparse
from prunebench.pruning.wanda import input_features, input_norms
from maskutil import kept, same, total


def conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(128, 4),
    )


def data(n_batches: int = 4, batch_size: int = 5, shape=(4, 6, 6), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, *shape, generator=g),
            torch.randint(0, 4, (batch_size,), generator=g),
        )
        for _ in range(n_batches)
    ]


# --- Wanda ------------------------------------------------------------------------------


def test_wanda_linear_norms_and_mask_match_an_explicit_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4))
    batches = [(torch.randn(3, 2, 5), None), (torch.randn(2, 2, 5), None)]  # samples x tokens
    squares = [0.0] * 5
    for x, _ in batches:
        for sample in x:
            for token in sample:
                for j in range(5):
                    squares[j] += float(token[j]) ** 2
    norms = torch.tensor(squares, dtype=torch.float64).sqrt()
    torch.testing.assert_close(input_norms(model, model[0], batches), norms)

    weight = model[0].weight.detach().double()
    mask = METHODS.get("wanda")(
        PruneContext(model, batches=lambda: iter(batches), options={"batches": 2}), 0.6
    )["0.weight"]
    for i in range(4):
        scores = [abs(float(weight[i, j])) * float(norms[j]) for j in range(5)]
        best = sorted(range(5), key=lambda j: -scores[j])[: keep_count(5, 0.6)]
        assert mask[i].nonzero().flatten().tolist() == sorted(best)


def test_wanda_conv_norms_match_an_explicit_loop_over_positions():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=(1, 2), dilation=(1, 2))
    model = nn.Sequential(conv)
    x = torch.randn(2, 2, 7, 8)
    out_h, out_w = conv(x).shape[2:]
    padded = F.pad(x, (2, 2, 1, 1))
    squares = torch.zeros(2 * 3 * 3, dtype=torch.float64)
    for n in range(2):
        for oh in range(out_h):
            for ow in range(out_w):
                for c in range(2):
                    for i in range(3):
                        for j in range(3):
                            v = padded[n, c, oh * 2 + i * 1, ow * 2 + j * 2]
                            squares[c * 9 + i * 3 + j] += float(v) ** 2
    torch.testing.assert_close(input_norms(model, conv, [(x, None)]), squares.sqrt())


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, (2, 3), padding="same"),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 4, 3, padding="valid", stride=2),
    ],
)
def test_wanda_unfolded_features_reproduce_the_convolution(conv):
    x = torch.randn(2, 3, 6, 7)
    out = conv(x)
    features = input_features(conv, x)
    recomputed = features @ conv.weight.reshape(4, -1).T + conv.bias
    torch.testing.assert_close(recomputed, out.permute(0, 2, 3, 1).reshape(-1, 4))


def test_wanda_every_row_keeps_the_same_count():
    model = conv_net()
    batches = data()
    mask = METHODS.get("wanda")(PruneContext(model, batches=lambda: iter(batches)), 0.7)
    for m in mask.values():
        rows = m.reshape(m.shape[0], -1)
        assert (rows.sum(1) == keep_count(rows.shape[1], 0.7)).all()


def test_wanda_later_layers_see_pruned_activations():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 2.9], [0.1, 2.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
    batches = [(torch.ones(1, 2), None)]
    mask = METHODS.get("wanda")(
        PruneContext(model, batches=lambda: iter(batches), options={"batches": 1}), 0.5
    )
    assert mask["0.weight"].tolist() == [[True, False], [False, True]]
    # Dense hidden activations (5.9, 2.1) would keep the first weight of layer 2
    # (5.9 * 1 > 2.1 * 2); after pruning layer 1 they are (3, 2) and the second wins.
    assert mask["2.weight"].tolist() == [[False, True]]


def test_wanda_keeps_pruned_weights_pruned_and_model_untouched():
    model = conv_net()
    state = copy.deepcopy(model.state_dict())
    previous = METHODS.get("random")(PruneContext(model), 0.3)
    batches = data()
    mask = METHODS.get("wanda")(
        PruneContext(model, batches=lambda: iter(batches), mask=previous), 0.6
    )
    assert all(not (mask[n] & ~previous[n]).any() for n in mask)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_wanda_rejects_grouped_convs_and_missing_batches():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2))
    batches = data(1)
    with pytest.raises(ConfigError, match="groups=1"):
        METHODS.get("wanda")(
            PruneContext(model, batches=lambda: iter(batches), options={"batches": 1}), 0.5
        )
    with pytest.raises(ConfigError, match="methods.wanda.batches"):
        METHODS.get("wanda")(PruneContext(conv_net(), batches=lambda: iter(batches)), 0.5)


# --- N:M --------------------------------------------------------------------------------


def test_nm_linear_keeps_two_largest_of_every_four_along_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3))
    mask = METHODS.get("nm")(PruneContext(model), 0.5)["0.weight"]
    weight = model[0].weight.detach().abs()
    for row in range(3):
        for start in range(0, 8, 4):
            group = weight[row, start : start + 4]
            expected = sorted(group.argsort(descending=True)[:2].tolist())
            assert mask[row, start : start + 4].nonzero().flatten().tolist() == expected
    assert is_nm_sparse(mask, 2, 4)
    assert is_nm_sparse(model[0].weight.detach() * mask, 2, 4)
    assert not is_nm_sparse(model[0].weight.detach(), 2, 4)


def test_nm_conv_groups_run_along_input_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 4, 3))
    mask = METHODS.get("nm")(PruneContext(model, options={"n": 1, "m": 4}), 0.75)["0.weight"]
    for o in range(4):
        for i in range(3):
            for j in range(3):
                for start in range(0, 8, 4):
                    assert int(mask[o, start : start + 4, i, j].sum()) == 1
    assert is_nm_sparse(mask, 1, 4)
    assert kept({"w": mask}) == mask.numel() // 4


def test_nm_leaves_ineligible_layers_dense_and_reports_them(caplog):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 2 * 2, 4)
    )
    with caplog.at_level(logging.WARNING):
        mask = METHODS.get("nm")(PruneContext(model), 0.5)
    assert mask["0.weight"].all()
    assert "0.weight" in caplog.text
    assert is_nm_sparse(mask["2.weight"], 2, 4) and is_nm_sparse(mask["4.weight"], 2, 4)
    assert kept({"a": mask["2.weight"], "b": mask["4.weight"]}) * 2 == (
        mask["2.weight"].numel() + mask["4.weight"].numel()
    )


def test_nm_errors():
    with pytest.raises(ConfigError, match=r"methods\.nm.*implies sparsity 0\.5"):
        METHODS.get("nm")(PruneContext(conv_net()), 0.6)
    with pytest.raises(ConfigError, match="no prunable layer"):
        METHODS.get("nm")(PruneContext(nn.Sequential(nn.Linear(3, 2))), 0.5)
    with pytest.raises(ConfigError, match="methods.nm.score"):
        METHODS.get("nm")(PruneContext(conv_net(), options={"score": "taylor"}), 0.5)


def test_nm_keeps_pruned_weights_pruned():
    model = conv_net()
    previous = METHODS.get("random")(PruneContext(model), 0.2)
    mask = METHODS.get("nm")(PruneContext(model, mask=previous), 0.5)
    assert all(not (mask[n] & ~previous[n]).any() for n in mask)
    assert all(is_nm_sparse(m, 2, 4) for m in mask.values())


# --- Determinism and exact sparsity ----------------------------------------------------


@pytest.mark.parametrize("method, sparsity", [("wanda", 0.65), ("nm", 0.5)])
def test_same_seed_same_mask_and_exact_sparsity(method, sparsity):
    def run(seed: int):
        ctx = PruneContext(
            conv_net(),
            generator=torch.Generator().manual_seed(seed),
            batches=lambda: iter(data()),
        )
        return METHODS.get(method)(ctx, sparsity)

    first, second = run(3), run(3)
    assert same(first, second)
    assert abs(kept(first) - keep_count(total(first), sparsity)) <= len(first)


def test_nm_runs_only_at_the_sparsity_it_implies():
    from prunebench.pruning import METHODS

    nm = METHODS.get("nm")
    assert nm.sparsities(nm.resolve_options({"n": 1, "m": 4}), (0.5, 0.8)) == (0.75,)
    assert METHODS.get("random").sparsities({}, (0.5, 0.8)) == (0.5, 0.8)
