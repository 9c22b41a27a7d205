"""The fused LeakyReLU² MLP of the record's training step (record-stack.md §3 kernels, PR #1530), in Triton.

    out = mlp(x, up_w, down_w, slope)    # = F.linear(F.leaky_relu(F.linear(x, up_w), slope).square(), down_w)

The up-projection's GEMM writes both its output `pre` and the activation `post = leaky_relu(pre, slope)²` from one
epilogue, and in the backward the GEMM dpost = dout @ down_w multiplies in the activation's derivative (2·pre above
zero, 2·slope²·pre below) before it stores dpre. The element-wise passes that Inductor runs over the (tokens x 2048)
hidden state between the GEMMs (5.4% of a looped step in bench/RESULTS.md) disappear; the other three GEMMs of
the backward stay with cuBLAS. Only the trainer turns it on (`GPT.enable_fused_mlp`, CUDA with Triton installed);
the tests run the same kernels on the CPU in Triton's interpreter (TRITON_INTERPRET=1).
"""

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class Tiles:
    """Launch shape of both GEMMs: the record's 256 x 128 x 64 tiles (rows x hidden columns x reduction)."""

    block_m: int = 256
    block_n: int = 128
    block_k: int = 64
    group_m: int = 8  # row tiles visited together, so their weight tiles stay in L2
    num_warps: int = 8
    num_stages: int = 3
    persistent: bool = False  # one program per SM walking the tiles, its epilogues overlapping the next loads


TILES = Tiles()


@triton.jit
def _gemm_act_kernel(
    a_ptr, b_ptr, pre_ptr, out_ptr,
    M, N, K, programs,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om,
    slope,
    ACT_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """C = A @ B in fp32, then ACT_GRAD=False: store pre = C and out = leaky_relu(C)²;
    ACT_GRAD=True: load pre and store out = C * d leaky_relu(pre)² / d pre. Program p computes tiles p,
    p + programs, ... (one each when `programs` is the number of tiles)."""
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    k_tiles = K // BLOCK_K  # K is a multiple of BLOCK_K (checked by the caller)
    ks = tl.arange(0, BLOCK_K)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, programs, flatten=True):
        group = tile // (GROUP_M * tiles_n)
        first_m = group * GROUP_M
        group_rows = min(tiles_m - first_m, GROUP_M)
        rows = (first_m + tile % group_rows) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = ((tile % (GROUP_M * tiles_n)) // group_rows) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows[:, None] < M, cols[None, :] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            a = tl.load(a_ptr + rows[:, None] * stride_am + (k * BLOCK_K + ks)[None, :] * stride_ak, mask=row_ok)
            b = tl.load(b_ptr + (k * BLOCK_K + ks)[:, None] * stride_bk + cols[None, :] * stride_bn, mask=col_ok)
            acc = tl.dot(a, b, acc)

        offsets = rows[:, None] * stride_om + cols[None, :]
        ok = row_ok & col_ok
        if ACT_GRAD:
            pre = tl.load(pre_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            grad = acc * 2.0 * pre * tl.where(pre > 0, 1.0, slope * slope)
            tl.store(out_ptr + offsets, grad.to(out_ptr.dtype.element_ty), mask=ok)
        else:
            act = tl.where(acc > 0, acc, slope * acc)
            tl.store(pre_ptr + offsets, acc.to(pre_ptr.dtype.element_ty), mask=ok)
            tl.store(out_ptr + offsets, (act * act).to(out_ptr.dtype.element_ty), mask=ok)


def _launch(a, b, pre, out, slope: float, act_grad: bool, tiles: Tiles):
    (M, K), N = a.shape, b.shape[1]
    if K % tiles.block_k:
        raise ValueError(f"fused MLP: reduction dim {K} is not a multiple of the {tiles.block_k}-wide K tile")
    programs = triton.cdiv(M, tiles.block_m) * triton.cdiv(N, tiles.block_n)
    if tiles.persistent:
        processors = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else os.cpu_count()
        programs = min(programs, processors)
    _gemm_act_kernel[(programs,)](
        a, b, pre, out, M, N, K, programs,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
        slope, act_grad,
        tiles.block_m, tiles.block_n, tiles.block_k, tiles.group_m,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip


@torch.library.custom_op("pgolf::mlp_up_act", mutates_args=())
def up_act(x: torch.Tensor, up_w: torch.Tensor, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, post) = (x @ up_w.T, leaky_relu(pre, slope)²) for x (M, d) and up_w (hidden, d)."""
    pre = x.new_empty(x.size(0), up_w.size(0))
    post = torch.empty_like(pre)
    _launch(x, up_w.t(), pre, post, slope, act_grad=False, tiles=TILES)
    return pre, post


@up_act.register_fake
def _(x, up_w, slope):
    return x.new_empty(x.size(0), up_w.size(0)), x.new_empty(x.size(0), up_w.size(0))


@torch.library.custom_op("pgolf::mlp_down_act_grad", mutates_args=())
def down_act_grad(dout: torch.Tensor, down_w: torch.Tensor, pre: torch.Tensor, slope: float) -> torch.Tensor:
    """dpre = (dout @ down_w) * d leaky_relu(pre, slope)² / d pre for dout (M, d) and down_w (d, hidden)."""
    dpre = torch.empty_like(pre)
    _launch(dout, down_w, pre, dpre, slope, act_grad=True, tiles=TILES)
    return dpre


@down_act_grad.register_fake
def _(dout, down_w, pre, slope):
    return torch.empty_like(pre)


class _LeakyReluSquaredMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, up_w, down_w, slope):
        rows = x.reshape(-1, x.size(-1)).contiguous()
        pre, post = up_act(rows, up_w.contiguous(), slope)
        ctx.save_for_backward(rows, up_w, down_w, pre, post)
        ctx.slope, ctx.x_shape = slope, x.shape
        return (post @ down_w.t()).view(*x.shape[:-1], down_w.size(0))

    @staticmethod
    def backward(ctx, dout):
        rows, up_w, down_w, pre, post = ctx.saved_tensors
        dout = dout.reshape(-1, dout.size(-1)).contiguous()
        dpre = down_act_grad(dout, down_w.contiguous(), pre, ctx.slope)
        return (dpre @ up_w).view(ctx.x_shape), dpre.t() @ rows, dout.t() @ post, None


def mlp(x: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, slope: float) -> torch.Tensor:
    """The block's MLP on x (..., d) with up_w (hidden, d) and down_w (d, hidden), all of one dtype."""
    return _LeakyReluSquaredMLP.apply(x, up_w, down_w, slope)
