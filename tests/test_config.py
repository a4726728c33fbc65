from __future__ import annotations

import pytest

from lmlab.config import (
    PRESETS,
    FinetuneConfig,
    TrainConfig,
    apply_overrides,
    available_models,
    changed_keys,
    load_recipe,
    load_study,
    load_train,
    runtime_keys,
    to_dict,
)
from lmlab.errors import LmlabError


def shape(cfg) -> dict:
    return {s: sorted(t) for s, t in to_dict(cfg).items() if isinstance(t, dict)}


def test_every_model_has_every_preset_with_the_same_keys():
    assert available_models() == ["gru", "lstm", "rnn", "transformer"]
    for model in available_models():
        shapes = [shape(load_train(model, p)) for p in PRESETS]
        assert shapes[0] == shapes[1] == shapes[2], model


@pytest.mark.parametrize("recipe", ["finetune", "ft_eval", "dpo"])
def test_every_recipe_has_every_preset_with_the_same_keys(recipe):
    shapes = [shape(load_recipe(recipe, p)) for p in PRESETS]
    assert shapes[0] == shapes[1] == shapes[2]


def test_every_study_preset_has_the_same_sections():
    shapes = [shape(load_study(p)) for p in PRESETS]
    assert shapes[0] == shapes[1] == shapes[2]
    for p in PRESETS:  # the size experiment's overrides are valid finetune keys
        study = load_study(p)
        load_recipe("finetune", p, overrides=[*study.finetune.sizes.overrides, "data.train_docs=5"])


def test_presets_inherit_from_cpu_and_hold_only_what_differs():
    smoke, cpu = load_train("lstm", "smoke"), load_train("lstm", "cpu")
    assert smoke.model.hidden_size == 32 and cpu.model.hidden_size == 256
    assert smoke.optim.lr == cpu.optim.lr == 20.0 and smoke.preset == "smoke"


def test_overrides_parse_values_as_toml():
    cfg = {"optim": {"lr": 1.0, "name": "sgd", "betas": [0.9, 0.9]}, "train": {"compile": False}}
    out = apply_overrides(cfg, ["optim.lr=3e-4", "optim.name=adamw", "optim.betas=[0.9, 0.95]", "train.compile=true"])
    assert out == {"optim": {"lr": 3e-4, "name": "adamw", "betas": [0.9, 0.95]}, "train": {"compile": True}}
    assert cfg["optim"]["lr"] == 1.0  # the input is not modified


@pytest.mark.parametrize("bad", ["optim.lrr=1", "nosuch.key=1", "optim.lr"])
def test_bad_overrides_fail_loudly(bad):
    with pytest.raises(LmlabError):
        apply_overrides({"optim": {"lr": 1.0}}, [bad])


@pytest.mark.parametrize("bad,message", [
    ("model.hidden_size=abc", "model.hidden_size='abc' is not allowed: expected an integer"),
    ("train.epochs=abc", "train.epochs='abc' is not allowed: expected an integer"),
    ("data.batch_size=0", "data.batch_size=0 is not allowed: it must be at least 1"),
    ("model.dropout_emb=1.5", "model.dropout_emb=1.5 is not allowed: it must be below 1.0"),
    ("optim.lr=-1", "optim.lr=-1.0 is not allowed: it must be at least 0.0"),
    ("train.epochs=0", "train.epochs=0 is not allowed: it must be at least 1"),
    ("model.impl=jax", "model.impl='jax' is not allowed: choose one of scratch, nn"),
    ("model.arch=mamba", "model.arch='mamba' is not allowed"),
    ("train.compile=1", "train.compile=1 is not allowed: expected true or false"),
])
def test_values_are_checked_when_the_config_is_loaded(bad, message):
    with pytest.raises(LmlabError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_train("lstm", "smoke", [bad])


def test_runtime_keys_are_marked_once_in_the_schema():
    assert runtime_keys(TrainConfig) == {("train", k) for k in ("epochs", "budget_minutes", "replan", "patience",
                                                                      "device", "threads")}
    assert runtime_keys(FinetuneConfig) == {("train", k) for k in ("steps", "patience", "device", "threads")}
    recorded = to_dict(load_train("lstm", "smoke"))
    assert changed_keys(recorded, load_train("lstm", "smoke", ["train.epochs=9", "train.threads=1"])) == []
    assert changed_keys(recorded, load_train("lstm", "smoke", ["optim.lr=1"])) == ["optim.lr"]


def test_unknown_model_and_preset_name_the_choices():
    with pytest.raises(LmlabError, match="choose one of gru, lstm, rnn, transformer"):
        load_train("mamba", "cpu")
    with pytest.raises(LmlabError, match="smoke, cpu, gpu"):
        load_train("lstm", "huge")
