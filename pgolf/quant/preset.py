"""A quantization preset (`quant.presets.<name>` in config.yaml); the defaults are the record's (#1855)."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict
from ..errors import PgolfError


@dataclass
class ClassSpec:
    """Bits and SDClip sigmas for one class of matrices."""

    bits: int
    clip_sigmas: float

    @property
    def clip_range(self) -> int:
        return 2 ** (self.bits - 1) - 1


@dataclass
class GptqSpec:
    block_size: int = 128
    damp: float = 0.01


@dataclass
class LqerSpec:
    enabled: bool = True
    top_k: int = 3
    rank: int = 4
    group: int = 64
    asym: bool = True


@dataclass
class AwqSpec:
    enabled: bool = False
    top_k: int = 1
    group: int = 64


@dataclass
class Preset:
    attn: ClassSpec = field(default_factory=lambda: ClassSpec(bits=6, clip_sigmas=13.0))
    mlp: ClassSpec = field(default_factory=lambda: ClassSpec(bits=6, clip_sigmas=11.5))
    embed: ClassSpec = field(default_factory=lambda: ClassSpec(bits=7, clip_sigmas=14.0))
    gptq: GptqSpec = field(default_factory=GptqSpec)
    lqer: LqerSpec = field(default_factory=LqerSpec)
    awq: AwqSpec = field(default_factory=AwqSpec)

    def __post_init__(self):
        for name in ("attn", "mlp", "embed"):
            spec = getattr(self, name)
            if not 2 <= spec.bits <= 8 or spec.clip_sigmas <= 0:
                raise PgolfError(
                    f"quant preset: {name} needs 2 <= bits <= 8 (int8 storage) and clip_sigmas > 0, "
                    f"got {dataclasses.asdict(spec)}; fix the preset in config.yaml"
                )

    @classmethod
    def parse(cls, values: dict | None, where: str = "quant preset") -> "Preset":
        """Build from a mapping; missing keys take the record's values, unknown keys are an error."""
        values = dict(values or {})
        default = cls()
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise PgolfError(f"{where}: unknown key(s) {unknown}; known keys: attn, mlp, embed, gptq, lqer, awq")
        parts = {}
        for f in dataclasses.fields(cls):
            base = getattr(default, f.name)
            merged = {**dataclasses.asdict(base), **(values.get(f.name) or {})}
            parts[f.name] = from_dict(type(base), merged, f"{where}.{f.name}")
        return cls(**parts)

    def for_class(self, kind: str) -> ClassSpec:
        return getattr(self, kind)


def read_preset_file(path) -> dict:
    """The settings of a preset written to a file (pgolf.capfit's preset.json), checked by Preset.parse."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PgolfError(f"{path}: preset file not found; run the capfit rule first") from None
    except json.JSONDecodeError as e:
        raise PgolfError(f"{path}: not valid JSON ({e}); re-run the capfit rule") from None
    if not isinstance(values, dict):
        raise PgolfError(f"{path}: a preset file holds one preset mapping; re-run the capfit rule")
    Preset.parse(values, str(path))
    return values
