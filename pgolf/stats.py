"""The record acceptance test of the challenge (docs/record-stack.md §1.1): beat the comparison by at least 0.005 nats,
one-sided, with p < 0.01 over the seeds (Student's t; written here to avoid a SciPy dependency)."""

import math
import statistics

MIN_IMPROVEMENT_NATS = 0.005
SIGNIFICANCE = 0.01


def _betacf(a, b, x, iters=300, eps=1e-15):
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a, b, x):
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t, df):
    """P(T > t) for Student's t with df degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def acceptance(val_losses, val_bpbs, comparison_bpb):
    """Improvement over `comparison_bpb` in nats per token and the one-sided p-value of beating it by 0.005 nats."""
    nats_per_bpb = statistics.fmean(val_losses) / statistics.fmean(val_bpbs)
    improvements = [(comparison_bpb - bpb) * nats_per_bpb for bpb in val_bpbs]
    mean = statistics.fmean(improvements)
    result = {
        "comparison_bpb": comparison_bpb,
        "delta_bpb": statistics.fmean(val_bpbs) - comparison_bpb,
        "delta_nats": -mean,
        "required_improvement_nats": MIN_IMPROVEMENT_NATS,
        "seeds": len(val_bpbs),
        "p_value": None,
        "accepted": None,
    }
    if len(improvements) >= 2:
        sd = statistics.stdev(improvements)
        t = (
            (mean - MIN_IMPROVEMENT_NATS) / (sd / math.sqrt(len(improvements)))
            if sd > 0
            else math.copysign(math.inf, mean - MIN_IMPROVEMENT_NATS)
        )
        p = t_sf(t, len(improvements) - 1) if math.isfinite(t) else (0.0 if t > 0 else 1.0)
        result.update(t_statistic=t, p_value=p, accepted=bool(p < SIGNIFICANCE))
    return result
