"""The script's config: the dataclass sections less their defaults, and filled back to the same dataclasses."""

import dataclasses
import json
from pathlib import Path

import pytest

from pgolf import scriptconfig as S
from pgolf.config import narrow_config, resolve

ROOT = Path(__file__).resolve().parent.parent
DATACLASS_SECTIONS = ["model", "train", "hessians", "eval", "record"]  # the last: quant.presets.<submitted preset>
OTHER_SECTIONS = ["run", "hardware", "data", "pack"]


def narrowed(recipe: str | None) -> dict:
    files = [ROOT / "config.yaml"] + ([ROOT / "recipes" / f"{recipe}.yaml"] if recipe else [])
    config = resolve([str(f) for f in files])
    return narrow_config(config, config["submission"]["preset"])


def built(config: dict) -> dict:
    return {key: build(holder[key]) for holder, key, build in S.sections(config)}


def contains(big, small) -> bool:
    """Every entry of `small` is in `big` with the same value (dicts compared entry by entry)."""
    if isinstance(small, dict) and isinstance(big, dict):
        return all(key in big and contains(big[key], value) for key, value in small.items())
    return big == small


@pytest.mark.parametrize("recipe", [None, "smoke"], ids=["record", "smoke"])
def test_filled_in_sparse_config_builds_the_same_dataclasses(recipe):
    config = narrowed(recipe)
    original = json.loads(json.dumps(config))
    sparse = S.sparse_config(config)
    full = S.full_config(sparse)
    assert config == original  # neither changes its argument
    assert list(built(config)) == DATACLASS_SECTIONS
    assert built(full) == built(config)
    assert contains(full, config)  # what the run logs holds every value of the narrowed config ...
    for holder, key, build in S.sections(full):  # ... and the rest of each dataclass's values
        assert holder[key] == json.loads(json.dumps(dataclasses.asdict(build(holder[key]))))
    for key in OTHER_SECTIONS:
        assert sparse[key] == config[key]
    assert sparse["quant"]["submission_preset"] == config["quant"]["submission_preset"]
    assert S.full_config(full) == full


def test_record_values_are_the_defaults_so_its_sections_embed_nothing():
    sparse = S.sparse_config(narrowed(None))
    assert [holder[key] for holder, key, _ in S.sections(sparse)] == [{}] * len(DATACLASS_SECTIONS)


def test_smoke_sections_keep_only_what_differs():
    config, sparse = narrowed("smoke"), S.sparse_config(narrowed("smoke"))
    assert sparse["model"]["model_dim"] == config["model"]["model_dim"] == 64
    assert "logit_softcap" not in sparse["model"] and config["model"]["logit_softcap"] == 30.0
    assert sparse["eval"]["tilt"] == {"enabled": True}  # a nested dataclass entry by entry


def test_a_plain_dict_value_stays_whole():
    """eval.ttt.targets is a dict, not a dataclass: its parser takes it as given, so one changed entry keeps all."""
    config = narrowed(None)
    config["eval"]["ttt"]["targets"]["q"] = False
    sparse = S.sparse_config(config)
    assert sparse["eval"] == {"ttt": {"targets": config["eval"]["ttt"]["targets"]}}
    assert built(S.full_config(sparse))["eval"].ttt.targets["k"] is True


def test_key_order_does_not_change_the_embedded_config():
    """A config read back from a JSON file with sorted keys (the code rule's --config) embeds what the same config
    built in memory embeds (capfit sizes the script from the latter): a dict value equal to its default in another key
    order is still the default."""
    config = narrowed(None)
    config["eval"]["ttt"]["targets"] = dict(reversed(config["eval"]["ttt"]["targets"].items()))
    assert S.sparse_config(config) == S.sparse_config(narrowed(None))
    assert S.sparse_config(config)["eval"] == {}


@dataclasses.dataclass
class Derived:
    """A dataclass whose default for `b` depends on `a`: b equal to its default is not b left out."""

    a: int = 1
    b: int | None = None

    def __post_init__(self):
        self.b = self.a if self.b is None else self.b


def test_a_section_the_defaults_cannot_rebuild_stays_whole(monkeypatch):
    def sections(config):
        return [(config, "x", lambda values: Derived(**(values or {})))] if "x" in config else []

    monkeypatch.setattr(S, "sections", sections)
    assert S.sparse_config({"x": {"a": 1, "b": 1}}) == {"x": {}}
    assert S.sparse_config({"x": {"a": 1, "b": 3}}) == {"x": {"b": 3}}
    # b=1 equals Derived()'s b, but without it a=2 makes b=2: the section stays whole
    assert S.sparse_config({"x": {"a": 2, "b": 1}}) == {"x": {"a": 2, "b": 1}}


def test_a_missing_section_stays_missing():
    config = {"run": {"name": "x"}, "eval": {"seq_len": 64}}
    assert S.sparse_config(config) == config
    full = S.full_config(config)
    assert set(full) == {"run", "eval"} and full["eval"]["seq_len"] == 64 and full["eval"]["batch_tokens"] == 524288
