"""The config train_gpt.py embeds: each section a config dataclass reads, less the values its defaults already hold.

pgolf.codepack embeds sparse_config(narrowed config); the script's bootstrap hands run_all full_config(that), in
which each such section holds every value of its dataclass again, so the stages (and the config their logs embed)
read the values they run with. The defaults are the record's, so the record's sections embed nothing.
"""

import dataclasses
import json


def sections(config: dict) -> list:
    """(the dict holding it, its key, the function that builds its dataclass) for each section of `config` read
    through a config dataclass: model, train, hessians, eval, and the submitted quantization preset."""
    from .evaluate import EvalConfig
    from .hessians import HessianConfig
    from .model import ModelConfig
    from .quant.preset import Preset
    from .stageconfig import from_dict
    from .train import TrainConfig

    quant = config.get("quant") or {}
    found = [
        (config, "model", ModelConfig.from_dict),
        (config, "train", lambda values: from_dict(TrainConfig, values, "config train")),
        (config, "hessians", lambda values: from_dict(HessianConfig, values, "config hessians")),
        (config, "eval", EvalConfig.parse),
        (quant.get("presets") or {}, quant.get("submission_preset"), Preset.parse),
    ]
    return [(holder, key, build) for holder, key, build in found if key in holder]


def _values(built) -> dict:
    """A dataclass's values as the JSON config spells them."""
    return json.loads(json.dumps(dataclasses.asdict(built)))


def full_config(config: dict) -> dict:
    """`config` with each dataclass section holding all its dataclass's values (a sparse one filled in)."""
    config = json.loads(json.dumps(config))
    for holder, key, build in sections(config):
        holder[key] = _values(build(holder[key]))
    return config


def sparse_config(config: dict) -> dict:
    """`config` with each dataclass section cut to the values that differ from its dataclass's defaults (nested
    dataclasses too), where full_config gives the same dataclass back; a section where it would not stays whole."""
    config = json.loads(json.dumps(config))
    for holder, key, build in sections(config):
        section = _differences(build({}), holder[key])
        if build(section) == build(holder[key]):
            holder[key] = section
    return config


def _differences(default, values: dict) -> dict:
    """The entries of `values` that differ from the dataclass instance `default`, those of nested dataclasses by
    entry (their sections' parsers fill in the rest: pgolf.evaluate.EvalConfig.parse, pgolf.quant.preset.Preset)."""
    out = {}
    for key, value in values.items():
        base = getattr(default, key, dataclasses.MISSING)
        if dataclasses.is_dataclass(base) and isinstance(value, dict):
            value = _differences(base, value)
            if value:
                out[key] = value
        elif base is dataclasses.MISSING or json.dumps(value, sort_keys=True) != json.dumps(base, sort_keys=True):
            out[key] = value
    return out
