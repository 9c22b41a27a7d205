"""The training step's two fused kernels, as the record runs them (#1855: FUSED_CE_ENABLED and the fused MLP):

- `softcapped_ce(logits, targets, cap)`: the cross-entropy of cap * tanh(logits / cap), per row. One pass over
  the bf16 logits computes the row's log-sum-exp; the backward recomputes the softcap from the logits and writes
  their gradient, so the softcapped fp32 logits never exist in memory.
- `mlp(x, up_w, down_w, slope)`: leaky_relu(x @ up_w^T, slope)^2 @ down_w^T. The up projection's epilogue writes
  both its output and the activation; in the backward, the gradient of the down projection's input is multiplied
  by the activation's derivative in that matmul's epilogue.

On CUDA with Triton these are Triton kernels (the matmul's tiles loaded through TMA descriptors); on other
devices, and as the tests' reference, the same arithmetic in plain torch. Both are torch.library custom ops, so
torch.compile leaves them whole. cap * tanh(u / cap) = 2 * cap * sigmoid(2u / cap) - cap: the kernels use the
sigmoid form (the constant cancels in the cross-entropy).

The tests run the Triton kernels on the CPU with TRITON_INTERPRET=1 (tests/test_kernels.py).
"""

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # the CPU install: every op takes its torch path
    triton = None

IGNORE_INDEX = -100  # targets that score nothing, as F.cross_entropy's default
CE_BLOCK = 1024  # vocabulary columns per iteration of a row's loop
MLP_TILE = (256, 128, 64)  # rows, columns and reduction depth of one output tile (#1855's choice for the H100)
MLP_PERSISTENT = True  # on CUDA one program per SM loops over the tiles (#1855's layout); False: one per tile


def _triton_on(t: torch.Tensor) -> bool:
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


# ----- softcapped cross-entropy -----
if triton is not None:

    @triton.jit
    def _ce_forward_kernel(logits, targets, losses, lses, stride, cap, n_cols: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits + row * stride
        scale, inv = 2.0 * cap, 2.0 / cap
        run_max, run_sum = -float("inf"), 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
            z = tl.where(cols < n_cols, scale * tl.sigmoid(x * inv), -float("inf"))
            new_max = tl.maximum(run_max, tl.max(z, axis=0))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            run_max = new_max
        lse = run_max + tl.log(run_sum)
        tl.store(lses + row, lse)
        target = tl.load(targets + row)
        hit = target != -100  # IGNORE_INDEX
        x_t = tl.load(base + tl.where(hit, target, 0)).to(tl.float32)
        tl.store(losses + row, tl.where(hit, lse - scale * tl.sigmoid(x_t * inv), 0.0))

    @triton.jit
    def _ce_backward_kernel(
        logits, targets, lses, grad_losses, grads, stride, cap, n_cols: tl.constexpr, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        base, out = logits + row * stride, grads + row * stride
        scale, inv = 2.0 * cap, 2.0 / cap
        target = tl.load(targets + row)
        g = tl.where(target != -100, tl.load(grad_losses + row), 0.0)  # IGNORE_INDEX scores nothing
        lse = tl.load(lses + row)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
            s = tl.sigmoid(x * inv)
            dz = g * (tl.exp(scale * s - lse) - tl.where(cols == target, 1.0, 0.0))
            tl.store(out + cols, (dz * 4.0 * s * (1.0 - s)).to(out.dtype.element_ty), mask=cols < n_cols)


def _softcapped_rows(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(logits.float() / cap)


# Explicit schemas: the submission's minified code has no annotations to infer them from.
@torch.library.custom_op(
    "pgolf::softcapped_ce", mutates_args=(), schema="(Tensor logits, Tensor targets, float cap) -> (Tensor, Tensor)"
)
def _ce_forward(logits, targets, cap):
    """Per-row losses (0 where the target is IGNORE_INDEX) and log-sum-exps, fp32, of (N, V) logits."""
    if _triton_on(logits):
        logits = logits.contiguous()
        losses = logits.new_empty(logits.size(0), dtype=torch.float32)
        lses = torch.empty_like(losses)
        _ce_forward_kernel[(logits.size(0),)](
            logits, targets, losses, lses, logits.stride(0), cap, n_cols=logits.size(1), BLOCK=CE_BLOCK, num_warps=4
        )
        return losses, lses
    capped = _softcapped_rows(logits, cap)
    lses = torch.logsumexp(capped, dim=-1)
    hit = targets != IGNORE_INDEX
    picked = capped.gather(1, torch.where(hit, targets, 0)[:, None])[:, 0]
    return torch.where(hit, lses - picked, 0.0), lses


@_ce_forward.register_fake
def _(logits, targets, cap):
    return logits.new_empty(logits.size(0), dtype=torch.float32), logits.new_empty(logits.size(0), dtype=torch.float32)


@torch.library.custom_op(
    "pgolf::softcapped_ce_backward",
    mutates_args=(),
    schema="(Tensor logits, Tensor targets, Tensor lses, Tensor grad_losses, float cap) -> Tensor",
)
def _ce_backward(logits, targets, lses, grad_losses, cap):
    """d(sum of grad_losses * losses)/d(logits), in the logits' dtype."""
    if _triton_on(logits):
        logits = logits.contiguous()
        grads = torch.empty_like(logits)
        _ce_backward_kernel[(logits.size(0),)](
            logits, targets, lses, grad_losses.contiguous(), grads, logits.stride(0), cap,
            n_cols=logits.size(1), BLOCK=CE_BLOCK, num_warps=4,
        )  # fmt: skip
        return grads
    hit = targets != IGNORE_INDEX
    tanh = torch.tanh(logits.float() / cap)
    dz = torch.exp(cap * tanh - lses[:, None]) - F.one_hot(torch.where(hit, targets, 0), logits.size(1))
    dz = dz * torch.where(hit, grad_losses, 0.0)[:, None]
    return (dz * (1 - tanh * tanh)).to(logits.dtype)


@_ce_backward.register_fake
def _(logits, targets, lses, grad_losses, cap):
    return torch.empty_like(logits)


def _ce_setup(ctx, inputs, output):
    logits, targets, cap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.cap = cap


def _ce_grad(ctx, grad_losses, _grad_lses):
    logits, targets, lses = ctx.saved_tensors
    return _ce_backward(logits, targets, lses, grad_losses, ctx.cap), None, None


_ce_forward.register_autograd(_ce_grad, setup_context=_ce_setup)


def softcapped_ce(logits: torch.Tensor, targets: torch.Tensor, cap: float, reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy(cap * tanh(logits / cap), targets) over the last dim, in fp32; `logits` (..., V) stay in their
    dtype. reduction "mean" (over the targets that are not IGNORE_INDEX) or "none" (targets' shape)."""
    losses, _ = _ce_forward(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), float(cap))
    if reduction == "none":
        return losses.reshape(targets.shape)
    return losses.sum() / (targets != IGNORE_INDEX).sum()


# ----- the MLP: leaky_relu(x @ up^T)^2 @ down^T -----
if triton is not None:

    @triton.jit
    def _act_grad(pre, slope):
        """d/dpre of leaky_relu(pre, slope)^2."""
        return 2.0 * tl.where(pre > 0, pre, slope * slope * pre)

    @triton.jit
    def _mlp_matmul_kernel(
        a_desc, b_desc, out_desc, aux_desc, slope, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SMS: tl.constexpr, FORWARD: tl.constexpr,
    ):  # fmt: skip
        """Output tiles of A @ B^T, each program looping over every SMS-th tile (SMS = 0: one tile a program,
        what Triton's interpreter can run). FORWARD: out = the product (pre), aux = leaky_relu(pre)^2. Otherwise:
        out = the product * act'(aux), aux holding pre."""
        if SMS > 0:
            for tile in tl.range(tl.program_id(0), tl.cdiv(M, BM) * tl.cdiv(N, BN), SMS, flatten=True):
                _mlp_tile(a_desc, b_desc, out_desc, aux_desc, slope, tile, N, K, BM, BN, BK, FORWARD)
        else:
            _mlp_tile(a_desc, b_desc, out_desc, aux_desc, slope, tl.program_id(0), N, K, BM, BN, BK, FORWARD)

    @triton.jit
    def _mlp_tile(
        a_desc, b_desc, out_desc, aux_desc, slope, tile, N: tl.constexpr, K: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, FORWARD: tl.constexpr,
    ):  # fmt: skip
        """One output tile; its epilogue works in two column halves to bound the shared memory of its stores."""
        half: tl.constexpr = BN // 2
        row, col = (tile // tl.cdiv(N, BN)) * BM, (tile % tl.cdiv(N, BN)) * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, K, BK):
            acc = tl.dot(a_desc.load([row, k]), b_desc.load([col, k]).T, acc)
        left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, half)), (0, 2, 1)))
        _mlp_epilogue(left, out_desc, aux_desc, row, col, slope, FORWARD)
        _mlp_epilogue(right, out_desc, aux_desc, row, col + half, slope, FORWARD)

    @triton.jit
    def _mlp_epilogue(part, out_desc, aux_desc, row, col, slope, FORWARD: tl.constexpr):
        rounded = part.to(out_desc.dtype).to(tl.float32)  # the product as the unfused matmul stores it
        if FORWARD:
            out_desc.store([row, col], rounded.to(out_desc.dtype))
            act = tl.where(rounded > 0, rounded, slope * rounded)
            aux_desc.store([row, col], (act * act).to(aux_desc.dtype))
        else:
            pre = aux_desc.load([row, col]).to(tl.float32)
            out_desc.store([row, col], (rounded * _act_grad(pre, slope)).to(out_desc.dtype))


def _mlp_matmul(a: torch.Tensor, b: torch.Tensor, slope: float, pre: torch.Tensor | None = None):
    """Triton: a @ b^T with the activation epilogue; (pre, post) forward, the pre-activation gradient backward."""
    (M, K), N = a.shape, b.size(0)
    BM, BN, BK = MLP_TILE
    out = a.new_empty(M, N)
    aux = a.new_empty(M, N) if pre is None else pre
    descs = [
        TensorDescriptor.from_tensor(a, [BM, BK]),
        TensorDescriptor.from_tensor(b, [BN, BK]),
        TensorDescriptor.from_tensor(out, [BM, BN // 2]),
        TensorDescriptor.from_tensor(aux, [BM, BN // 2]),
    ]
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    persistent = MLP_PERSISTENT and a.is_cuda
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count if persistent else 0
    _mlp_matmul_kernel[(min(sms, tiles) if sms else tiles,)](
        *descs, slope, M=M, N=N, K=K, BM=BM, BN=BN, BK=BK, SMS=sms, FORWARD=pre is None,
        num_warps=8, num_stages=4 if pre is None else 3,
    )  # fmt: skip
    return (out, aux) if pre is None else out


@torch.library.custom_op(
    "pgolf::mlp",
    mutates_args=(),
    schema="(Tensor x, Tensor up_w, Tensor down_w, float slope) -> (Tensor, Tensor, Tensor)",
)
def _mlp_forward(x, up_w, down_w, slope):
    """(out, pre, post) for x (M, K), up_w (N, K), down_w (D, N): pre = x @ up_w^T, post = leaky_relu(pre, slope)^2,
    out = post @ down_w^T. pre and post are outputs so that the backward can keep them."""
    if _triton_on(x):
        pre, post = _mlp_matmul(x.contiguous(), up_w.contiguous(), slope)
    else:
        pre = x @ up_w.T
        post = F.leaky_relu(pre.float(), slope).square().to(pre.dtype)
    return post @ down_w.T, pre, post


@_mlp_forward.register_fake
def _(x, up_w, down_w, slope):
    hidden = x.new_empty(x.size(0), up_w.size(0))
    return x.new_empty(x.size(0), down_w.size(0)), hidden, torch.empty_like(hidden)


@torch.library.custom_op(
    "pgolf::mlp_pre_grad", mutates_args=(), schema="(Tensor grad_out, Tensor down_w, Tensor pre, float slope) -> Tensor"
)
def _mlp_pre_grad(grad_out, down_w, pre, slope):
    """The gradient at pre: (grad_out @ down_w) * act'(pre), for grad_out (M, D) and down_w (D, N)."""
    if _triton_on(grad_out):
        return _mlp_matmul(grad_out.contiguous(), down_w.T.contiguous(), slope, pre=pre.contiguous())
    grad_post = (grad_out @ down_w).float()
    pre = pre.float()
    return (grad_post * 2 * torch.where(pre > 0, pre, slope * slope * pre)).to(grad_out.dtype)


@_mlp_pre_grad.register_fake
def _(grad_out, down_w, pre, slope):
    return torch.empty_like(pre)


def _mlp_setup(ctx, inputs, output):
    x, up_w, down_w, ctx.slope = inputs
    ctx.save_for_backward(x, up_w, down_w, output[1], output[2])


def _mlp_grad(ctx, grad_out, _grad_pre, _grad_post):
    x, up_w, down_w, pre, post = ctx.saved_tensors
    grad_pre = _mlp_pre_grad(grad_out, down_w, pre, ctx.slope)
    return grad_pre @ up_w, grad_pre.T @ x, grad_out.T @ post, None


# A custom op's autograd rather than an autograd.Function: AOTAutograd's cache then keeps the training graph
# across processes (an autograd.Function in the graph bypasses it, and a restart re-traces).
_mlp_forward.register_autograd(_mlp_grad, setup_context=_mlp_setup)


def mlp(x: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, slope: float) -> torch.Tensor:
    """leaky_relu(x @ up_w^T, slope)^2 @ down_w^T for x (..., K), up_w (N, K), down_w (D, N), weights in x's
    dtype."""
    out, _, _ = _mlp_forward(x.reshape(-1, x.size(-1)), up_w.to(x.dtype), down_w.to(x.dtype), float(slope))
    return out.reshape(*x.shape[:-1], -1)
