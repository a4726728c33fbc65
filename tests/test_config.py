from __future__ import annotations

import pytest

from lmlab.config import PRESETS, apply_overrides, available_models, load_preset, load_study, recipe_config
from lmlab.errors import LmlabError


def test_every_model_has_every_preset_with_the_same_keys():
    assert available_models() == ["lstm", "rnn", "transformer"]
    for model in available_models():
        shapes = [{s: sorted(t) for s, t in load_preset(model, p).items()} for p in PRESETS]
        assert shapes[0] == shapes[1] == shapes[2], model


@pytest.mark.parametrize("recipe", ["finetune", "ft_eval", "dpo"])
def test_every_recipe_has_every_preset_with_the_same_keys(recipe):
    shapes = [{s: sorted(t) for s, t in recipe_config(recipe, p).items() if s != "preset"} for p in PRESETS]
    assert shapes[0] == shapes[1] == shapes[2]


def test_every_study_preset_has_the_same_sections():
    shapes = [{s: sorted(t) for s, t in load_study(p).items()} for p in PRESETS]
    assert shapes[0] == shapes[1] == shapes[2]
    for p in PRESETS:  # the size experiment's overrides are valid finetune keys
        study = load_study(p)
        recipe_config("finetune", p, overrides=[*study["finetune"]["sizes"]["overrides"], "data.train_docs=5"])


def test_overrides_parse_values_as_toml():
    cfg = {"optim": {"lr": 1.0, "name": "sgd", "betas": [0.9, 0.9]}, "train": {"compile": False}}
    out = apply_overrides(cfg, ["optim.lr=3e-4", "optim.name=adamw", "optim.betas=[0.9, 0.95]", "train.compile=true"])
    assert out == {"optim": {"lr": 3e-4, "name": "adamw", "betas": [0.9, 0.95]}, "train": {"compile": True}}
    assert cfg["optim"]["lr"] == 1.0  # the input is not modified


@pytest.mark.parametrize("bad", ["optim.lrr=1", "nosuch.key=1", "optim.lr"])
def test_bad_overrides_fail_loudly(bad):
    with pytest.raises(LmlabError):
        apply_overrides({"optim": {"lr": 1.0}}, [bad])


def test_unknown_model_and_preset_name_the_choices():
    with pytest.raises(LmlabError, match="choose one of lstm, rnn, transformer"):
        load_preset("gru", "cpu")
    with pytest.raises(LmlabError, match="smoke, cpu, gpu"):
        load_preset("lstm", "huge")
