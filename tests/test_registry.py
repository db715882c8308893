"""Models, datasets and pruning methods are three instances of one `Registry`, read alike."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from prunebench.data import (
    DATASETS,
    Dataset,
    RawSplits,
    dataset_shape,
    load_dataset,
    register_dataset,
)
from prunebench.errors import ConfigError
from prunebench.models import MODELS, get_model, model_names, register_model
from prunebench.pruning import METHODS, register_method
from prunebench.registry import Registry

# registry, the words of its errors, the config key, one registered name
REGISTRIES = {
    "models": (MODELS, "model", "model.name", "resnet20"),
    "datasets": (DATASETS, "dataset", "data.name", "mnist"),
    "methods": (METHODS, "pruning method", "method", "global_magnitude"),
}
SHAPES = {
    "digits": (10, (1, 8, 8)),
    "mnist": (10, (1, 28, 28)),
    "fashion_mnist": (10, (1, 28, 28)),
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
}


@pytest.fixture(params=sorted(REGISTRIES))
def registry(request):
    return REGISTRIES[request.param]


def test_all_three_are_the_same_class_with_the_same_interface(registry):
    table, kind, key, known = registry
    assert type(table) is Registry and (table.kind, table.key) == (kind, key)
    names = table.names()
    assert names and isinstance(names, list) and len(set(names)) == len(names)
    assert list(table) == names and len(table) == len(names)
    assert [name for name, _ in table.items()] == names
    assert all(table.get(name) is entry for name, entry in table.items())
    assert known in table and "nope" not in table and ["unhashable"] not in table
    assert known in repr(table)


def test_models_and_methods_are_sorted_and_datasets_keep_their_listed_order():
    assert MODELS.names() == sorted(MODELS.names()) == model_names()
    assert METHODS.names() == sorted(METHODS.names())
    assert DATASETS.names() == list(SHAPES)


@pytest.mark.parametrize("name", ["nope", ["a", "list"]])
def test_an_unknown_name_is_a_config_error_naming_the_key_and_every_choice(registry, name):
    table, kind, key, _ = registry
    expected = (f"unknown {kind} {name!r} (key {key}); "
                f"allowed: {', '.join(table.names())}")
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        table.get(name)


def test_the_public_lookups_give_the_registry_errors():
    for call, table in [
        (lambda: get_model("nope", 10, (1, 8, 8)), MODELS),
        (lambda: dataset_shape("nope"), DATASETS),
        (lambda: load_dataset("nope"), DATASETS),
    ]:
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value).endswith(f"(key {table.key}); allowed: {', '.join(table)}")


def test_registering_a_name_twice_is_refused_and_changes_nothing(registry):
    table, kind, _, known = registry
    before = table.items()
    with pytest.raises(ValueError, match=f"{kind} '{known}' is registered twice"):
        table.register(known, object())
    with pytest.raises(ValueError, match="registered twice"):
        table.decorator(known)(object())
    assert table.items() == before


def test_the_public_register_functions_refuse_a_taken_name_too():
    with pytest.raises(ValueError, match="model 'resnet20' is registered twice"):
        register_model("resnet20")(lambda num_classes, input_shape: nn.Identity())
    taken = dataclasses.replace(DATASETS.get("mnist"))
    with pytest.raises(ValueError, match="dataset 'mnist' is registered twice"):
        register_dataset(taken)
    with pytest.raises(ValueError, match="pruning method 'random' is registered twice"):
        register_method("random", when="trained")(lambda ctx, sparsity: {})


def test_dataset_shapes_are_known_without_any_data_file(tmp_path, monkeypatch):
    """The planner sizes models from `dataset_shape`: it must read nothing and fetch nothing."""

    def no_reading(root, mirror, download):
        raise AssertionError("dataset_shape read data")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNEBENCH_DATA_MIRROR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(DATASETS, "_items", {
        name: dataclasses.replace(entry, load_raw=no_reading) for name, entry in DATASETS.items()
    })
    for name, shape in SHAPES.items():
        assert dataset_shape(name) == shape
        entry = DATASETS.get(name)
        assert entry.shape() == (entry.num_classes, entry.input_shape) == shape
        assert entry.name == name
    assert not any(tmp_path.iterdir())


def _toy_raw(root, mirror, download) -> RawSplits:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 4, 4), generator=generator, dtype=torch.uint8)
    labels = torch.arange(24) % 3
    return RawSplits(images[:20], labels[:20], images[20:], labels[20:])


def test_a_plugin_dataset_registers_and_loads_like_a_built_in_one(monkeypatch):
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    toy = register_dataset(Dataset("toy", 3, (3, 4, 4), _toy_raw, 255.0, (0.5,) * 3, (0.25,) * 3))
    assert "toy" in DATASETS and DATASETS.names()[-1] == "toy"
    assert dataset_shape("toy") == (3, (3, 4, 4))
    data = load_dataset("toy", "unused", val_size=4)
    assert (data.name, data.num_classes, data.input_shape) == ("toy", 3, (3, 4, 4))
    assert data.augment is None
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (16, 4, 4)
    raw = _toy_raw(None, None, False)
    torch.testing.assert_close(data.test_x, (raw.test_x.float() / 255 - 0.5) / 0.25)
    again = toy.load("unused", val_size=4)
    assert all(torch.equal(getattr(data, f), getattr(again, f))
               for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"))
    with pytest.raises(ConfigError, match="dataset 'toy' has no augmentation"):
        load_dataset("toy", augment=True)


def test_a_dataset_entry_must_have_one_mean_and_std_per_channel():
    with pytest.raises(ValueError, match="'bad'"):
        Dataset("bad", 10, (3, 8, 8), _toy_raw, 255.0, (0.5,), (0.25,))
    with pytest.raises(ValueError, match="'flat'"):
        Dataset("flat", 10, (64,), _toy_raw, 255.0, (0.5,), (0.25,))
