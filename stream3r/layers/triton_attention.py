"""Split-KV flash attention in Triton for the cached (streaming) attention on CUDA.

Why: torch SDPA has no tensor-core kernel for float32 inputs (the float32 path is the SIMT
memory-efficient kernel, ~30-40 TFLOP/s on an H100), so a float32 stream spends most of its
time in cached attention.  Upstream's "fp32" runs with TF32 matmuls allowed; this kernel does
the same for attention: q k^T and p v run on the tensor cores in TF32 (float32 accumulation,
float32 online softmax), never materialising the scores (a chunked q k^T in torch would write
and re-read ``heads * Nq * 4`` bytes per key several times: memory-bound, see benchmarks/NOTES.md).
The same kernel also takes fp16/bf16 inputs (tensor cores in that dtype).

Layout: q ``[1, Nq, h, d]``, k/v ``[1, Nk, h, d]`` (NHD, last dim contiguous: the KV cache's
layout, no copies).  The keys are split into ``splits`` chunks, one grid axis; each program
writes its chunk's normalised output and log-sum-exp (natural log), merged afterwards in
float32 (as :func:`stream3r.layers.attention.split_kv_attention`).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

try:  # optional: present with CUDA builds of torch
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 # pragma: no cover - absent, or a CPU-only build failing at import (RuntimeError)
    triton = None
    tl = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit(do_not_specialize=["NQ", "NK", "SPLITS"])  # one compiled kernel for every cache length
    def _split_attn_fwd(Q, K, V, Out, LSE, qk_scale,
                        stride_qb, stride_qm, stride_qh, stride_kb, stride_km, stride_kh,
                        stride_vb, stride_vm, stride_vh,
                        stride_os, stride_oh, stride_om, stride_ls, stride_lh,
                        NQ, NK, CHUNK, SPLITS,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        bs = tl.program_id(2)  # batch * SPLITS + split
        b = bs // SPLITS
        s = bs % SPLITS
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=offs_m[:, None] < NQ, other=0.0)
        start = s * CHUNK
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        k_base = K + b * stride_kb + h * stride_kh + offs_d[:, None]
        v_base = V + b * stride_vb + h * stride_vh + offs_d[None, :]
        # chunks are whole key blocks; only keys >= NK (the end of the last chunk) are masked
        for n in range(0, CHUNK, BLOCK_N):
            offs_n = start + n + tl.arange(0, BLOCK_N)
            kmask = offs_n < NK
            k = tl.load(k_base + offs_n[None, :] * stride_km, mask=kmask[None, :], other=0.0)  # [D, N]
            qk = tl.dot(q, k, input_precision=PREC) * qk_scale  # log2 units
            qk = tl.where(kmask[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] * stride_vm, mask=kmask[:, None], other=0.0)  # [N, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new
        acc = acc / l_i[:, None]
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
        om = offs_m < NQ
        tl.store(Out + bs * stride_os + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                 acc.to(Out.dtype.element_ty), mask=om[:, None])
        tl.store(LSE + bs * stride_ls + h * stride_lh + offs_m, lse, mask=om)

    @triton.jit
    def _src_max(m, L, S, b, h, offs_m, mm, s_ls, s_lh):
        for s in range(0, S):
            m = tl.maximum(m, tl.load(L + (b * S + s) * s_ls + h * s_lh + offs_m, mask=mm, other=0.0))
        return m

    @triton.jit
    def _src_acc(acc, den, m, Out, L, S, b, h, offs_m, offs_d, mm, s_os, s_oh, s_om, s_ls, s_lh):
        for s in range(0, S):
            w = tl.exp(tl.load(L + (b * S + s) * s_ls + h * s_lh + offs_m, mask=mm, other=0.0) - m)
            o = tl.load(Out + (b * S + s) * s_os + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :],
                        mask=mm[:, None], other=0.0)
            den += w
            acc += w[:, None] * o.to(tl.float32)
        return acc, den

    # every integer is a runtime value: one compiled kernel for every shape / chunk count
    @triton.jit(do_not_specialize=["S1", "S2", "S3", "S4", "NQ", "s_o1s", "s_o1h", "s_o1m", "s_l1s", "s_l1h",
                                   "s_o2s", "s_o2h", "s_o2m", "s_l2s", "s_l2h", "s_o3s", "s_o3h", "s_o3m", "s_l3s",
                                   "s_l3h", "s_o4s", "s_o4h", "s_o4m", "s_l4s", "s_l4h", "s_outb", "s_outm", "s_outh"])
    def _merge_partials(O1, L1, O2, L2, O3, L3, O4, L4, OUT, S1, S2, S3, S4, NQ,
                        s_o1s, s_o1h, s_o1m, s_l1s, s_l1h, s_o2s, s_o2h, s_o2m, s_l2s, s_l2h,
                        s_o3s, s_o3h, s_o3m, s_l3s, s_l3h, s_o4s, s_o4h, s_o4m, s_l4s, s_l4h,
                        s_outb, s_outm, s_outh,
                        HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr):
        """OUT[b, m, h, :] = the softmax(lse)-weighted sum of the chunk outputs of up to four sources
        (source i: chunks b*Si .. b*Si + Si - 1 of (Oi, Li); Si may be 0)."""
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        b = tl.program_id(2)
        offs_m = pid_m * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_d = tl.arange(0, HEAD_DIM)
        mm = offs_m < NQ
        m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        m = _src_max(m, L1, S1, b, h, offs_m, mm, s_l1s, s_l1h)
        m = _src_max(m, L2, S2, b, h, offs_m, mm, s_l2s, s_l2h)
        m = _src_max(m, L3, S3, b, h, offs_m, mm, s_l3s, s_l3h)
        m = _src_max(m, L4, S4, b, h, offs_m, mm, s_l4s, s_l4h)
        den = tl.zeros([BLOCK_Q], tl.float32)
        acc = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
        acc, den = _src_acc(acc, den, m, O1, L1, S1, b, h, offs_m, offs_d, mm, s_o1s, s_o1h, s_o1m, s_l1s, s_l1h)
        acc, den = _src_acc(acc, den, m, O2, L2, S2, b, h, offs_m, offs_d, mm, s_o2s, s_o2h, s_o2m, s_l2s, s_l2h)
        acc, den = _src_acc(acc, den, m, O3, L3, S3, b, h, offs_m, offs_d, mm, s_o3s, s_o3h, s_o3m, s_l3s, s_l3h)
        acc, den = _src_acc(acc, den, m, O4, L4, S4, b, h, offs_m, offs_d, mm, s_o4s, s_o4h, s_o4m, s_l4s, s_l4h)
        out = acc / den[:, None]
        tl.store(OUT + b * s_outb + offs_m[:, None] * s_outm + h * s_outh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=mm[:, None])


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per input element size; tuned on an H100 (NOTES.md)
_CONFIGS = {4: (128, 32, 8, 3), 2: (128, 64, 8, 3)}


def configure_triton_attention(elem_size: int, block_m: int, block_n: int, num_warps: int, num_stages: int) -> None:
    """Override the launch configuration for inputs of ``elem_size`` bytes (benchmarks)."""
    _CONFIGS[elem_size] = (block_m, block_n, num_warps, num_stages)


def _auto_splits(batch: int, nq: int, nk: int, heads: int, block_m: int, block_n: int, device: torch.device) -> int:
    """Chunks per call: the count (<= 32, chunks >= 16 key blocks) whose programs fill the last
    wave best (one program per multiprocessor at a time), ties to fewer chunks."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = batch * heads * ((nq + block_m - 1) // block_m)
    top = int(max(1, min(32, nk // (16 * block_n))))
    best, best_score = 1, -1.0
    for s in range(1, top + 1):
        progs = blocks * s
        waves = (progs + sms - 1) // sms
        score = progs / (waves * sms) - 0.004 * s  # fill of the waves, a small cost per chunk (merge)
        if score > best_score + 1e-9:
            best, best_score = s, score
    return best


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if triton is None:
        raise RuntimeError("triton is not installed")
    d = q.shape[-1]
    if d not in (16, 32, 64, 128) or k.shape[-1] != d or v.shape[-1] != d:
        raise ValueError(f"triton_attention needs head_dim in (16, 32, 64, 128), got {d}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k, v must share a dtype")
    if not (q.shape[0] == k.shape[0] == v.shape[0]) or k.shape[1] != v.shape[1] or k.shape[2] != q.shape[2]:
        raise ValueError(f"shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} do not match")


def triton_attention_partial(q: Tensor, k: Tensor, v: Tensor, splits: int = 0) -> Tuple[Tensor, Tensor, int]:
    """Per-chunk outputs ``[B * splits, h, Nq, d]`` (float32) and log-sum-exps ``[B * splits, h, Nq]``
    of maskless attention on q ``[B, Nq, h, d]``, k/v ``[B, Nk, h, d]``; returns (o, lse, splits)."""
    _check(q, k, v)
    B, nq, h, d = q.shape
    nk = k.shape[1]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    bm, bn, warps, stages = _CONFIGS[q.element_size()]
    if splits <= 0:
        splits = _auto_splits(B, nq, nk, h, bm, bn, q.device)
    # a chunk is a whole number of key blocks; every chunk non-empty
    nblocks = (nk + bn - 1) // bn
    per = (nblocks + splits - 1) // splits
    chunk = per * bn
    splits = (nk + chunk - 1) // chunk
    o = torch.empty((B * splits, h, nq, d), device=q.device, dtype=torch.float32)
    _launch(q, k, v, o, (o.stride(0), o.stride(1), o.stride(2)), chunk, splits, nk)
    return o, _launch.lse, splits


def _launch(q, k, v, o, o_strides, chunk, splits, nk):
    B, nq, h, d = q.shape
    bm, bn, warps, stages = _CONFIGS[q.element_size()]
    lse = torch.empty((B * splits, h, nq), device=q.device, dtype=torch.float32)
    prec = "tf32" if q.dtype == torch.float32 else "ieee"
    grid = ((nq + bm - 1) // bm, h, B * splits)
    _launch.last = _split_attn_fwd[grid](
        q, k, v, o, lse, (d ** -0.5) * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o_strides[0], o_strides[1], o_strides[2], lse.stride(0), lse.stride(1),
        nq, nk, chunk, splits,
        HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, PREC=prec, num_warps=warps, num_stages=stages,
    )
    _launch.lse = lse


MAX_MERGE_SOURCES = 4


def merge_partials(parts, batch: int, out_dtype: torch.dtype) -> Tensor:
    """Merge split-KV partial results into ``[batch, Nq, h, d]`` (NHD, contiguous, ``out_dtype``).

    ``parts``: 1 .. 4 ``(o [batch * S, h, Nq, d], lse [batch * S, h, Nq] float32)`` (any strides with
    a unit last stride; chunk ``b * S + s`` belongs to batch ``b``); every chunk is weighted by
    ``softmax(lse)`` over all chunks of all parts."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    if not 1 <= len(parts) <= MAX_MERGE_SOURCES:
        raise ValueError(f"merge_partials takes 1 to {MAX_MERGE_SOURCES} parts, got {len(parts)}")
    fixed = []
    for o, lse in parts:
        if o.stride(-1) != 1:
            o = o.contiguous()
        if lse.stride(-1) != 1:
            lse = lse.contiguous()
        fixed.append((o, lse, o.shape[0] // batch))
    o1 = fixed[0][0]
    _, h, nq, d = o1.shape
    while len(fixed) < MAX_MERGE_SOURCES:
        fixed.append((o1, fixed[0][1], 0))
    out = torch.empty((batch, nq, h, d), device=o1.device, dtype=out_dtype)
    bq = 64 if d <= 64 else 32
    grid = ((nq + bq - 1) // bq, h, batch)
    args = [t for o, lse, _ in fixed for t in (o, lse)] + [out] + [S for _, _, S in fixed] + [nq]
    for o, lse, _ in fixed:
        args += [o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1)]
    args += [out.stride(0), out.stride(1), out.stride(2)]
    _merge_partials[grid](*args, HEAD_DIM=d, BLOCK_Q=bq, num_warps=4)
    return out


def triton_attention(q: Tensor, k: Tensor, v: Tensor, splits: int = 0) -> Tensor:
    """Maskless attention ``[B, Nq, h, d]`` (NHD, contiguous, q's dtype) through the Triton split-KV kernel.

    float32 inputs use TF32 tensor-core products (float32 softmax and accumulation): relative
    error ~2e-3 of float64, as TF32 matmuls."""
    _check(q, k, v)
    B, nq, h, d = q.shape
    nk = k.shape[1]
    bm, bn = _CONFIGS[q.element_size()][:2]
    if splits <= 0:
        splits = _auto_splits(B, nq, nk, h, bm, bn, q.device)
    if splits == 1:  # one chunk: the kernel writes the final NHD output itself
        if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty((B, nq, h, d), device=q.device, dtype=q.dtype)
        nblocks = (nk + bn - 1) // bn
        _launch(q, k, v, out, (out.stride(0), out.stride(2), out.stride(1)), nblocks * bn, 1, nk)
        return out
    o, lse, splits = triton_attention_partial(q, k, v, splits)
    return merge_partials([(o, lse)], B, q.dtype)
