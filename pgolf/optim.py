"""The record's optimizers (docs/record-stack.md §4): sharded Muon for the matrix banks, AdamW for the rest.

There is no DDP wrapper: `Optimizers.step` averages the gradients over ranks itself. Bank gradients are
reduce-scattered over the bank dimension (padded to a multiple of the world size), each rank runs Muon on its
shard only and the orthogonalized updates are all-gathered; the replicated tensors (tied embedding, scalars) are
all-reduced as one flat buffer. Momentum buffers are gathered whole in `state_dict`, so a checkpoint loads at
any world size.
"""

import dataclasses
import math

import torch
import torch.distributed as torch_dist

from .errors import PgolfError

# Polar Express (5 iterations, one (a, b, c) each), as #1855 runs them (from #1344): no norm safety factor.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# The classic Muon quintic (#1493 and #1572): one (a, b, c) for every iteration, no safety factor.
NEWTON_SCHULZ = (3.4445, -4.775, 2.0315)
MUON_BACKENDS = ("polar_express", "newton_schulz")
POLAR_EPS = 1e-7
CLIP_SCOPES = ("local", "global")


@dataclasses.dataclass
class OptimConfig:
    """Optimizer hyperparameters (the `train:` section supplies them; record values as defaults)."""

    matrix_lr: float = 0.026
    muon_momentum: float = 0.97
    muon_momentum_warmup_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_row_normalize: bool = True
    muon_backend: str = "polar_express"  # newton_schulz: the classic quintic, muon_backend_steps iterations
    muon_backend_steps: int = 5
    muon_wd: float = 0.095
    embed_lr: float = 0.03
    embed_wd: float = 0.085
    scalar_lr: float = 0.02
    scalar_wd: float = 0.02
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_eps: float = 1e-8
    grad_clip: float = 0.3
    grad_clip_scope: str = "local"  # local: each rank clips its own gradient before the average (#1855); global: after

    def __post_init__(self):
        self.check()

    def check(self):
        """Run where the DAG builds the config; left out of the script (pgolf.model.ModelConfig.check says why)."""
        if self.muon_backend not in MUON_BACKENDS:
            raise PgolfError(f"config train.muon_backend: {self.muon_backend!r} is not one of {MUON_BACKENDS}")
        if self.grad_clip_scope not in CLIP_SCOPES:
            raise PgolfError(
                f"config train.grad_clip_scope: {self.grad_clip_scope!r} is not one of {CLIP_SCOPES}; fix it in your "
                "config"
            )


def polar_express(g: torch.Tensor) -> torch.Tensor:
    """Approximate the orthogonal polar factor U Vᵀ of each matrix in g (..., rows, cols); bf16 on GPU."""
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + POLAR_EPS)
    for a, b, c in POLAR_EXPRESS:
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if tall:
        x = x.mT
    return x


def newton_schulz(g: torch.Tensor, steps: int) -> torch.Tensor:
    """The classic quintic Newton-Schulz orthogonalization of each matrix in g (..., rows, cols); bf16 on GPU."""
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    a, b, c = NEWTON_SCHULZ
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def muon_direction(
    grad, buf, momentum: torch.Tensor, row_normalize: bool, backend: str = "polar_express", steps: int = 5
) -> torch.Tensor:
    """Nesterov momentum (buf <- mu*buf + g; g + mu*buf), row normalization (MuonEq-R), then Polar Express or
    `steps` classic Newton-Schulz iterations (`backend`).

    `momentum` is a 0-d tensor so that its warm-up does not recompile the compiled version."""
    buf.mul_(momentum).add_(grad)
    update = grad + momentum * buf
    if row_normalize:
        update = update / update.norm(dim=-1, keepdim=True).clamp_min(1e-7)
    rows, cols = update.shape[-2:]
    ortho = newton_schulz(update, steps) if backend == "newton_schulz" else polar_express(update)
    return ortho.to(grad.dtype) * math.sqrt(max(1.0, rows / cols))


def muon_momentum(step: int, cfg: OptimConfig) -> float:
    """Linear momentum warm-up from `muon_momentum_warmup_start` to `muon_momentum`."""
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    t = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1 - t) * cfg.muon_momentum_warmup_start + t * cfg.muon_momentum


class Optimizers:
    """Muon over `groups["matrix"]` (3-D banks) + AdamW over `groups["embed"]` and `groups["scalar"]`.

    Call `step(lr_mult, momentum)` after the backward passes of one global batch, with gradients that are each
    rank's local mean; it averages them over ranks, clips (`grad_clip_scope` local: each rank's gradient by its own
    norm before the average, as #1855's loop without a DDP wrapper; global: the averaged gradient, as #1572) and
    updates every parameter.
    """

    def __init__(self, groups: dict, cfg: OptimConfig, world: int = 1, rank: int = 0, compile_muon=False):
        self.cfg, self.world, self.rank = cfg, world, rank
        self.banks = list(groups["matrix"])
        if any(p.ndim != 3 for p in self.banks):
            raise ValueError("Muon takes 3-D parameter banks (n, rows, cols)")
        self.replicated = list(groups["embed"]) + list(groups["scalar"])
        self.shard = [math.ceil(p.shape[0] / world) for p in self.banks]
        self.buffers = [
            torch.zeros((s, *p.shape[1:]), device=p.device, dtype=torch.float32) for s, p in zip(self.shard, self.banks)
        ]
        adam_groups = [
            {"params": list(groups[name]), "lr": lr, "base_lr": lr, "weight_decay": wd}
            for name, lr, wd in (("embed", cfg.embed_lr, cfg.embed_wd), ("scalar", cfg.scalar_lr, cfg.scalar_wd))
        ]
        on_gpu = bool(self.replicated) and self.replicated[0].is_cuda
        self.adam = torch.optim.AdamW(
            [g for g in adam_groups if g["params"]],
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            fused=on_gpu or None,
        )
        self.direction = torch.compile(muon_direction, dynamic=False) if compile_muon else muon_direction

    def zero_grad(self):
        for p in self.banks + self.replicated:
            p.grad = None

    def _clip_scale(self, norm: torch.Tensor) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_'s factor: max_norm / (norm + 1e-6), at most 1."""
        if self.cfg.grad_clip <= 0:
            return torch.ones((), device=norm.device)
        return (self.cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)

    @torch.no_grad()
    def _clip_local(self) -> torch.Tensor:
        """Scale this rank's gradients by the clip factor of their own norm; return that norm."""
        grads = [p.grad for p in self.banks + self.replicated if p.grad is not None]
        sq = torch.zeros((), device=self._device(), dtype=torch.float32)
        for g in grads:
            sq += g.float().square().sum()
        norm = sq.sqrt()
        scale = self._clip_scale(norm)
        for g in grads:
            g.mul_(scale.to(g.dtype))
        return norm

    def _global_norm(self, shards, flat) -> torch.Tensor:
        """Norm of the rank-averaged gradient: the bank shards' squares summed over ranks, plus the replicated."""
        sq = torch.zeros((), device=self._device(), dtype=torch.float32)
        for g in shards:
            sq += g.float().square().sum()
        if self.world > 1:
            torch_dist.all_reduce(sq)
        if flat is not None:
            sq += flat.float().square().sum()
        return sq.sqrt()

    @torch.no_grad()
    def step(self, lr_mult: float, momentum: float) -> torch.Tensor:
        """Average, clip and apply one update; return the gradient norm before clipping (this rank's local norm
        for the local scope, the averaged gradient's for the global; 0-d tensor, not synchronized, so that logging
        decides when to wait for it)."""
        if self.cfg.grad_clip_scope == "local":
            norm = self._clip_local()
            shards, flat = self._reduce_bank_grads(), self._reduce_replicated_grads()
            scale = torch.ones((), device=norm.device)
        else:
            shards, flat = self._reduce_bank_grads(), self._reduce_replicated_grads()
            norm = self._global_norm(shards, flat)
            scale = self._clip_scale(norm)
        self._muon_step(shards, scale, lr_mult, momentum)
        if flat is not None:
            flat.mul_(scale)
            offset = 0
            for p in self.replicated:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            for group in self.adam.param_groups:
                group["lr"] = group["base_lr"] * lr_mult
            self.adam.step()
        return norm

    def _device(self):
        return (self.banks + self.replicated)[0].device

    def _reduce_bank_grads(self) -> list:
        """Each rank's shard of every bank's rank-averaged gradient (padded banks: zero gradient rows)."""
        shards, pending = [], []
        for p, s in zip(self.banks, self.shard):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if self.world == 1:
                shards.append(g.float())
                continue
            full = torch.zeros((s * self.world, *p.shape[1:]), device=g.device, dtype=torch.float32)
            full[: p.shape[0]] = g
            out = torch.empty((s, *p.shape[1:]), device=g.device, dtype=torch.float32)
            pending.append(torch_dist.reduce_scatter_tensor(out, full, async_op=True))
            shards.append(out)
        for work in pending:
            work.wait()
        if self.world > 1:
            for out in shards:
                out.div_(self.world)
        return shards

    def _reduce_replicated_grads(self):
        if not self.replicated:
            return None
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in self.replicated]
        )
        if self.world > 1:
            torch_dist.all_reduce(flat)
            flat.div_(self.world)
        return flat

    def _muon_step(self, shards, scale, lr_mult, momentum):
        lr = self.cfg.matrix_lr * lr_mult
        momentum = torch.tensor(momentum, dtype=torch.float32, device=self._device())
        for p, s, g, buf in zip(self.banks, self.shard, shards, self.buffers):
            update = self.direction(
                g * scale,
                buf,
                momentum,
                self.cfg.muon_row_normalize,
                self.cfg.muon_backend,
                self.cfg.muon_backend_steps,
            )
            if self.world > 1:
                full = torch.empty((s * self.world, *p.shape[1:]), device=p.device, dtype=update.dtype)
                torch_dist.all_gather_into_tensor(full, update.contiguous())
                update = full[: p.shape[0]]
            p.mul_(1 - lr * self.cfg.muon_wd)
            p.add_(update.to(p.dtype), alpha=-lr)

    def state_dict(self) -> dict:
        """World-size independent state: whole momentum buffers (gathered) and AdamW's state."""
        buffers = []
        for p, s, buf in zip(self.banks, self.shard, self.buffers):
            if self.world > 1:
                full = torch.empty((s * self.world, *p.shape[1:]), device=buf.device, dtype=buf.dtype)
                torch_dist.all_gather_into_tensor(full, buf)
                buf = full
            buffers.append(buf[: p.shape[0]].clone())
        return {"muon_buffers": buffers, "adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict):
        for p, s, buf, whole in zip(self.banks, self.shard, self.buffers, state["muon_buffers"]):
            rows = whole[self.rank * s : (self.rank + 1) * s]
            buf.zero_()
            buf[: rows.shape[0]].copy_(rows)
        self.adam.load_state_dict(state["adam"])


def lr_multiplier(frac: float, warmdown_frac: float, min_lr: float) -> float:
    """Flat 1.0, then linear warmdown over the last `warmdown_frac` of training to the floor `min_lr`."""
    if warmdown_frac <= 0 or frac < 1 - warmdown_frac:
        return 1.0
    return max((1 - frac) / warmdown_frac, min_lr)


class EMA:
    """Exponential moving average (fp32) of every parameter, updated after each step from step 0."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self):
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - self.decay)

    @torch.no_grad()
    def copy_to_params(self):
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)
