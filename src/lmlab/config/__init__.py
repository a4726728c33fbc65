"""Configs: typed dataclasses per recipe (:mod:`.schema`) read from TOML presets (:mod:`.loader`)."""

from lmlab.config.loader import (PRESETS, apply_overrides, available_models, build, changed_keys, config_differences,
                                 load_recipe, load_study, load_train, merge, parse_value, runtime_keys, to_dict)
from lmlab.config.schema import (DpoConfig, FinetuneConfig, FtEvalConfig, Lora, RecurrentModel, RlConfig, StudyConfig,
                                 TrainConfig, TransformerModel)

__all__ = ["PRESETS", "apply_overrides", "available_models", "build", "changed_keys", "config_differences",
           "load_recipe", "load_study", "load_train", "merge", "parse_value", "runtime_keys", "to_dict",
           "DpoConfig", "FinetuneConfig", "FtEvalConfig", "Lora", "RecurrentModel", "RlConfig", "StudyConfig", "TrainConfig",
           "TransformerModel"]
