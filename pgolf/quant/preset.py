"""A quantization preset (`quant.presets.<name>` in config.yaml); the defaults are the record's (#1855)."""

import dataclasses
from dataclasses import dataclass, field

from ..errors import PgolfError
from ..stageconfig import from_dict


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
    clip_percentiles: list[float] | None = None  # #1512: row clips searched over these |w| quantiles; None = SDClip


@dataclass
class LqerSpec:
    enabled: bool = True
    top_k: int = 3
    rank: int = 4
    group: int = 64
    asym: bool = True
    adaptive: bool = False  # LQER_ADAPTIVE (#1935): ranks per tensor under budget_bytes, not top_k at one rank
    budget_bytes: int = 60000
    ranks: list[int] = field(default_factory=lambda: [4, 6, 8, 10])  # candidate ranks of the adaptive allocator


@dataclass
class GateSpec:
    int8: bool = True  # GATED_ATTN_QUANT_GATE: attention gates int8 per row (#1855); false keeps them fp16 (#2123)


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
    gates: GateSpec = field(default_factory=GateSpec)
    embed_plain_int8: bool = False  # #1512: tok_emb in int8 rows (clipped at a |w| quantile), without GPTQ

    def __post_init__(self):
        self.check()

    def check(self):
        """Run where the DAG builds the preset; left out of the script (pgolf.model.ModelConfig.check says why)."""
        percentiles = self.gptq.clip_percentiles
        if percentiles is not None and (not percentiles or any(not 0 < p <= 1 for p in percentiles)):
            raise PgolfError(
                f"quant preset: gptq.clip_percentiles {percentiles} needs values in (0, 1]; fix the preset"
            )
        for name in ("attn", "mlp", "embed"):
            spec = getattr(self, name)
            if not 2 <= spec.bits <= 8 or spec.clip_sigmas <= 0:
                raise PgolfError(
                    f"quant preset: {name} needs 2 <= bits <= 8 (int8 storage) and clip_sigmas > 0, "
                    f"got {dataclasses.asdict(spec)}; fix the preset in config.yaml"
                )
        if self.lqer.adaptive and (self.lqer.budget_bytes < 0 or not self.lqer.ranks or min(self.lqer.ranks) < 1):
            raise PgolfError(
                f"quant preset: lqer.adaptive needs budget_bytes >= 0 and a non-empty list of ranks >= 1, got "
                f"budget_bytes={self.lqer.budget_bytes} ranks={self.lqer.ranks}; fix the preset in config.yaml"
            )

    @classmethod
    def parse(cls, values: dict | None, where: str = "quant preset") -> "Preset":
        """Build from a mapping; missing keys take the record's values, unknown keys are an error."""
        values = dict(values or {})
        default = cls()
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise PgolfError(
                f"{where}: unknown key(s) {unknown}; known keys: attn, mlp, embed, gptq, lqer, awq, gates, embed_plain_int8"
            )
        parts = {}
        for f in dataclasses.fields(cls):
            base = getattr(default, f.name)
            if not dataclasses.is_dataclass(base):
                parts[f.name] = values.get(f.name, base)
                continue
            merged = {**dataclasses.asdict(base), **(values.get(f.name) or {})}
            parts[f.name] = from_dict(type(base), merged, f"{where}.{f.name}")
        return cls(**parts)

    def for_class(self, kind: str) -> ClassSpec:
        return getattr(self, kind)
