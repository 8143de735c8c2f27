"""GGUF block quantizers, the numpy reference: `quantize(rows) -> blocks` and
`dequantize(blocks, shape) -> rows` for every block type of quant.types.

`quantize` gives the bytes of llama.cpp's reference quantizers (ggml-quants.c's
quantize_row_*_ref, which llama-quantize runs when no importance matrix is given).
Those are plain float32 C compiled without FMA or reassociation, so every sum here
is accumulated element by element in the C's order (never numpy's pairwise sum)
and every expression keeps the C's operand order: that is what makes the bytes
equal, not just close. Work is vectorized across blocks (columns of a transposed
array), sequential within one. The Cython quantizers (_kernels/quantize_blocks.pyx)
are held to these bytes by tests; this module is their specification, not the fast
path.

`dequantize` is ggml's dequantize_row_* in gguf.quants' operand order (equal to it).
Inputs must be finite (callers refuse NaN and Inf first).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
QK_K = 256


def _f32(v) -> np.float32:
    return F32(v)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even through the float add of 1.5 * 2^23
    (exact for |v| < 2^22; outside it the same bits as the C, not a rounding)."""
    bits = (v.astype(F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x7FFFFF) - 0x400000


def _fp16(v) -> np.ndarray:
    """float32 → IEEE half bits, round to nearest even (ggml's GGML_FP32_TO_FP16)."""
    return np.asarray(v, F32).astype(np.float16).view(np.uint16)


def _from_fp16(bits: np.ndarray) -> np.ndarray:
    return bits.view(np.float16).astype(F32)


def _seq_sum(terms, from_zero: bool = True) -> np.ndarray:
    """sum += term, term by term, in float32 (C's loop order), from 0 (so +0, never
    -0, when every term is zero) or, as some C sums do, from the first term."""
    acc = None
    for t in terms:
        acc = (t + F32(0) if from_zero else t.copy()) if acc is None else acc + t
    return acc


def _bytes(*fields) -> np.ndarray:
    """Concatenate per-block fields, each (n_blocks, k) of any dtype, as bytes."""
    return np.concatenate([np.ascontiguousarray(f).view(np.uint8) for f in fields], axis=1)


# ---- 32-value blocks ------------------------------------------------------------------

def _q8_0(x: np.ndarray) -> np.ndarray:
    amax = np.abs(x).max(axis=1)
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    v = x * inv[:, None]
    a = np.abs(v)
    r = np.floor(a)
    r = r + (a - r >= F32(0.5))          # roundf: half away from zero, exactly
    q = (np.sign(v) * r).astype(np.int8)
    return _bytes(_fp16(d)[:, None], q)


def _q4_0(x: np.ndarray) -> np.ndarray:
    i = np.abs(x).argmax(axis=1)          # the first value of largest magnitude, signed;
    mx = x[np.arange(len(x)), i]          # +0 when all are zeros (-0.0 ones too), as the C
    mx = np.where(mx != 0, mx, F32(0)).astype(F32)
    d = mx / F32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    q = np.minimum(15, np.trunc(x * inv[:, None] + F32(8.5)).astype(np.int8)).astype(np.uint8)
    return _bytes(_fp16(d)[:, None], q[:, :16] | (q[:, 16:] << 4))


def _q4_1(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=1), x.max(axis=1)
    d = (hi - lo) / F32(15)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    q = np.trunc((x - lo[:, None]) * inv[:, None] + F32(0.5)).astype(np.int8)
    q = np.minimum(15, q).astype(np.uint8)
    return _bytes(_fp16(d)[:, None], _fp16(lo)[:, None], q[:, :16] | (q[:, 16:] << 4))


# ---- k-quants: super-blocks of 256 ---------------------------------------------------

def _qkx2(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """ggml's make_qkx2_quants for many groups at once: xt, wt are (n, groups) —
    value i of every group in row i. Returns levels (n, groups) uint8, scale and
    min (groups,): x ≈ scale * level - min, chosen by weighted least squares over
    nstep + 1 trial scales."""
    n = xt.shape[0]
    lo, hi = xt.min(axis=0), xt.max(axis=0)
    sum_w = _seq_sum(wt, from_zero=False)
    sum_x = _seq_sum((wt[i] * xt[i] for i in range(n)), from_zero=False)
    lo = np.where(lo > 0, F32(0), lo).astype(F32)
    flat = hi == lo
    mn = lo
    with np.errstate(all="ignore"):
        iscale = F32(nmax) / (hi - mn)
        scale = F32(1) / iscale
        L = np.clip(nearest_int(iscale * (xt - mn)), 0, nmax)
        best = _seq_sum(wt[i] * np.square(scale * L[i].astype(F32) + mn - xt[i])
                        for i in range(n))
        for step in range(nstep + 1):
            # the C's min is the best so far: later trials offset by it, not the data's
            iscale = (_f32(rmin) + _f32(rdelta) * _f32(step) + _f32(nmax)) / (hi - mn)
            la = np.clip(nearest_int(iscale * (xt - mn)), 0, nmax)
            lf = la.astype(F32)
            wl = wt * lf
            sum_l = _seq_sum(wl)
            sum_l2 = _seq_sum(wl[i] * lf[i] for i in range(n))
            sum_xl = _seq_sum(wl[i] * xt[i] for i in range(n))
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            pos = this_min > 0
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32)
            this_min = np.where(pos, F32(0), this_min).astype(F32)
            mad = _seq_sum(wt[i] * np.square(this_scale * lf[i] + this_min - xt[i])
                           for i in range(n))
            better = (det > 0) & (mad < best) & ~flat
            L = np.where(better, la, L)
            best = np.where(better, mad, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L = np.where(flat, 0, L).astype(np.uint8)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return L, scale, (-mn).astype(F32)


def _first_max(v: np.ndarray) -> np.ndarray:
    """max over axis 1 of `if (v > m) m = v` from m = 0 (keeps +0 where all are <= 0)."""
    m = np.zeros(len(v), F32)
    for j in range(v.shape[1]):
        m = np.where(v[:, j] > m, v[:, j], m)
    return m


def _k_scales(scales: np.ndarray, mins: np.ndarray):
    """The 6-bit scales and mins of 8 groups (n, 8), their super-scales d and dmin
    (fp16 bits), and the 12 bytes that pack them."""
    ms, mm = _first_max(scales), _first_max(mins)
    with np.errstate(divide="ignore"):
        inv_s = np.where(ms > 0, F32(63) / ms, F32(0)).astype(F32)
        inv_m = np.where(mm > 0, F32(63) / mm, F32(0)).astype(F32)
    ls = np.minimum(63, nearest_int(inv_s[:, None] * scales) & 0xFF).astype(np.uint8)
    lm = np.minimum(63, nearest_int(inv_m[:, None] * mins) & 0xFF).astype(np.uint8)
    return ls, lm, _fp16(ms / F32(63)), _fp16(mm / F32(63))


def _pack_k_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 bytes of 8 6-bit scales and mins (n, 8) each (ggml's get_scale_min_k4)."""
    packed = np.zeros((len(ls), 12), np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return packed


def _qp(v: np.ndarray, w: np.ndarray, nmax: int):
    """ggml's make_qp_quants for many sets of 8 at once, v and w (n, 8): levels
    (n, 8) uint8 in 0..nmax and the scale (n,), v ≈ scale * level, the scale searched
    over 9 trials, then levels moved one at a time while the weighted fit improves."""
    n, k = v.shape
    mx = np.zeros(n, F32)
    for i in range(k):
        mx = np.where(mx > v[:, i], mx, v[:, i]).astype(F32)
    zero = mx == 0
    with np.errstate(all="ignore"):
        iscale = F32(nmax) / mx
        scale = F32(1) / iscale
        L = nearest_int(iscale[:, None] * v) & 0xFF    # the C's uint8 levels
        best = _seq_sum(w[:, i] * (v[:, i] - scale * L[:, i].astype(F32))
                        * (v[:, i] - scale * L[:, i].astype(F32)) for i in range(k))
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_s = (_f32(0.1) * _f32(step) + _f32(nmax)) / mx
            scale_s = F32(1) / iscale_s
            ls = np.minimum(nmax, nearest_int(iscale_s[:, None] * v)).astype(F32)
            mse = _seq_sum(w[:, i] * (v[:, i] - scale_s * ls[:, i]) * (v[:, i] - scale_s * ls[:, i])
                           for i in range(k))
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, iscale_s, iscale).astype(F32)
        lv = np.minimum(nmax, nearest_int(iscale[:, None] * v))
        lf, L = lv.astype(F32), lv & 0xFF   # the sums take the int, the levels its byte
        sumlx = _seq_sum(w[:, i] * v[:, i] * lf[:, i] for i in range(k))
        suml2 = _seq_sum(w[:, i] * lf[:, i] * lf[:, i] for i in range(k))
        for _ in range(5):  # a set with no change in a pass has none in the next either
            for i in range(k):
                wi, vi, li = w[:, i], v[:, i], L[:, i].astype(F32)
                slx = sumlx - wi * vi * li
                sl2 = suml2 - wi * li * li
                new = np.minimum(nmax, nearest_int(vi * sl2 / slx))
                nf = new.astype(F32)
                slx2 = slx + wi * vi * nf
                sl22 = sl2 + wi * nf * nf
                take = ((slx > 0) & (sl2 > 0) & (new != L[:, i])
                        & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[:, i] = np.where(take, new & 0xFF, L[:, i])
                sumlx = np.where(take, slx2, sumlx).astype(F32)
                suml2 = np.where(take, sl22, suml2).astype(F32)
        scale = sumlx / suml2
    return np.where(zero[:, None], 0, L).astype(np.uint8), np.where(zero, F32(0), scale)


def _qk_levels(x, nmax, rmin, nstep, qw=None):
    """Levels (n, 256) int of q4_K / q5_K super-blocks, and their header fields.
    With importance `qw` (n, 256), llama.cpp's quantize_row_q4_K_impl / q5_K_impl:
    weights qw * sqrt(sigma2 + x^2), a longer search (make_qkx3_quants, the same
    algorithm), and the 6-bit scales and mins fitted by make_qp_quants."""
    nb = len(x)
    groups = x.reshape(nb * 8, 32)
    gt = np.ascontiguousarray(groups.T)                       # (32, nb * 8)
    if qw is None:
        av = np.sqrt(_seq_sum(gt[i] * gt[i] for i in range(32)) / F32(32))
        wt = av + np.abs(gt)
        L, scales, mins = _qkx2(gt, wt, nmax, rmin, 0.1, nstep)
        ls, lm, d16, dm16 = _k_scales(scales.reshape(nb, 8), mins.reshape(nb, 8))
    else:
        sigma2 = F32(2) * _seq_sum(x[:, i] * x[:, i] for i in range(QK_K)) / F32(QK_K)
        w = (qw * np.sqrt(sigma2[:, None] + x * x)).astype(F32)
        wt = np.ascontiguousarray(w.reshape(nb * 8, 32).T)
        sw = _seq_sum(wt).reshape(nb, 8)
        L, scales, mins = _qkx2(gt, wt, nmax, -0.9, 0.05, 36)
        ls, d_block = _qp(scales.reshape(nb, 8), sw, 63)
        lm, m_block = _qp(mins.reshape(nb, 8), sw, 63)
        if nmax == 31:  # only q5_K's clamps them (a no-op unless a level wrapped)
            ls, lm = np.minimum(63, ls), np.minimum(63, lm)
        d16, dm16 = _fp16(d_block), _fp16(m_block)
    packed = _pack_k_scales(ls, lm)
    d = (_from_fp16(d16)[:, None] * ls.astype(F32)).reshape(-1)       # (nb * 8,)
    dm = (_from_fp16(dm16)[:, None] * lm.astype(F32)).reshape(-1)
    with np.errstate(all="ignore"):
        again = np.clip(nearest_int((gt + dm) / d), 0, nmax)
    L = np.where(d != 0, again, L).T.reshape(nb, QK_K)                # d == 0: keep
    return L.astype(np.uint8), d16, dm16, packed


def _q4_k(x: np.ndarray, qw=None) -> np.ndarray:
    L, d16, dm16, packed = _qk_levels(x, 15, -1.0, 20, qw)
    L = L.reshape(-1, 4, 2, 32)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return _bytes(d16[:, None], dm16[:, None], packed, qs)


def _q5_k(x: np.ndarray, qw=None) -> np.ndarray:
    L, d16, dm16, packed = _qk_levels(x, 31, -0.5, 15, qw)
    L = L.reshape(-1, 4, 2, 32)
    lo, hi = L & 0xF, L >> 4
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    shifts = (np.arange(8, dtype=np.uint8)).reshape(1, 4, 2, 1)    # bit 2b / 2b + 1 of qh
    qh = np.bitwise_or.reduce((hi << shifts).reshape(-1, 8, 32), axis=1).astype(np.uint8)
    return _bytes(d16[:, None], dm16[:, None], packed, qh, qs)


def _qx(xt: np.ndarray, nmax: int, w=None):
    """ggml's make_qx_quants(rmse_type 1) for many groups: xt (n, groups), weights w
    like it or x^2. Levels 0..2 nmax - 1 (n, groups) and the scale: x ≈ scale *
    (level - nmax)."""
    n, g = xt.shape
    i = np.abs(xt).argmax(axis=0)
    mx = xt[i, np.arange(g)]
    zero = np.abs(mx) < F32(1e-15)
    w = xt * xt if w is None else w

    def trial(iscale):
        lv = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1)
        lf = lv.astype(F32)
        sumlx = _seq_sum(w[i] * xt[i] * lf[i] for i in range(n))
        suml2 = _seq_sum(w[i] * lf[i] * lf[i] for i in range(n))
        return lv + nmax, sumlx, suml2

    with np.errstate(all="ignore"):
        L, sumlx, suml2 = trial(_f32(-nmax) / mx)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            lv, sumlx, suml2 = trial(-(_f32(nmax) + _f32(0.1) * _f32(step)) / mx)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better, lv, L)
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
            best = np.where(better, scale * sumlx, best).astype(F32)
    return np.where(zero, 0, L), np.where(zero, F32(0), scale).astype(F32)


def _q6_k(x: np.ndarray, qw=None) -> np.ndarray:
    """With importance `qw` (n, 256): quantize_row_q6_K_impl, qw the fit's weights."""
    nb = len(x)
    gt = np.ascontiguousarray(x.reshape(nb * 16, 16).T)             # (16, nb * 16)
    wt = None if qw is None else np.ascontiguousarray(qw.reshape(nb * 16, 16).T)
    L, scales = _qx(gt, 32, wt)
    scales = scales.reshape(nb, 16)
    # the scale of largest magnitude, the first of equals, signed
    amax, smax = np.zeros(nb, F32), np.zeros(nb, F32)
    for j in range(16):
        a = np.abs(scales[:, j])
        bigger = a > amax
        amax = np.where(bigger, a, amax)
        smax = np.where(bigger, scales[:, j], smax)
    zero = amax < F32(1e-15)
    with np.errstate(all="ignore"):
        iscale = F32(-128) / smax
        d16 = _fp16(F32(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
        d = (_from_fp16(d16)[:, None] * sc.astype(F32)).reshape(-1)
        again = np.clip(nearest_int(gt / d), -32, 31) + 32
    L = np.where(d != 0, again, L).T.reshape(nb, 2, 4, 32).astype(np.uint8)
    lo, hi = L & 0xF, L >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)],
                        axis=2).reshape(nb, 128)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6))
    out = _bytes(ql, qh.reshape(nb, 64), sc, d16[:, None])
    out[zero] = 0
    return out


# ---- plain floats ------------------------------------------------------------------------

def _f16(x: np.ndarray) -> np.ndarray:
    return _fp16(x)


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even on the upper 16 bits (ggml_compute_fp32_to_bf16)."""
    n = x.view(np.uint32).astype(np.uint64)
    return ((n + 0x7FFF + ((n >> 16) & 1)) >> 16).astype(np.uint16)


_QUANTIZE = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q4_k": _q4_k, "q5_k": _q5_k,
             "q6_k": _q6_k, "f16": _f16, "bf16": _bf16}


WEIGHTED = ("q4_k", "q5_k", "q6_k")  # types an importance matrix changes (here)


def quantize(name: str, rows: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """float32 rows (n, cols), cols a whole number of blocks → (n, row bytes) uint8.
    `importance` (cols,), positive: llama.cpp's importance matrix row for this
    tensor (the mean square of each input column's activations), used by the
    WEIGHTED types as llama-quantize --imatrix does and ignored by q8_0, f16 and bf16
    as it ignores it; q4_0 and q4_1 are refused with one."""
    from .types import TYPES
    t = TYPES[name]
    rows = np.ascontiguousarray(rows, F32)
    n, cols = rows.shape
    if cols % t.block:
        raise ValueError(f"{name}: rows of {cols} values are not whole blocks of {t.block}")
    args = ()
    if importance is not None and name in WEIGHTED:
        qw = np.ascontiguousarray(importance, F32).reshape(-1, QK_K)
        args = (np.tile(qw, (n, 1)),)
    elif importance is not None and name in ("q4_0", "q4_1"):
        raise ValueError(f"{name} with an importance matrix is not implemented")
    with np.errstate(all="ignore"):  # masked lanes (d == 0, flat groups) divide by zero
        out = _QUANTIZE[name](rows.reshape(-1, t.block), *args)
    return out.view(np.uint8).reshape(n, t.row_bytes(cols))


# ---- dequantize ----------------------------------------------------------------------------

def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given as their bits (uint16) → float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(F32)


def _k_unpack(s: np.ndarray):
    """6-bit scales and mins (n, 8) from the 12 packed bytes."""
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([a & 63, (c & 0xF) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc, mn


def _dq(blocks: np.ndarray, name: str) -> np.ndarray:
    b = blocks
    nb = len(b)
    if name in ("q8_0", "q4_0", "q4_1"):
        d = _from_fp16(b[:, 0:2].copy())
        if name == "q8_0":
            return b[:, 2:].view(np.int8).astype(F32) * d
        qs = b[:, 4 if name == "q4_1" else 2:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1)
        if name == "q4_0":
            return d * (q.astype(np.int8) - np.int8(8)).astype(F32)
        return d * q.astype(F32) + _from_fp16(b[:, 2:4].copy())
    if name in ("q4_k", "q5_k"):
        d, dmin = _from_fp16(b[:, 0:2].copy()), _from_fp16(b[:, 2:4].copy())
        sc, mn = _k_unpack(b[:, 4:16])
        qs = b[:, -128:].reshape(nb, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        q = (qs & 0xF).reshape(nb, 8, 32)
        if name == "q5_k":
            qh = b[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
            q = q | ((qh & 1) << 4)
        scale = (d * sc.astype(F32))[:, :, None]
        off = (dmin * mn.astype(F32))[:, :, None]
        return (scale * q.astype(F32) - off).reshape(nb, QK_K)
    # q6_k
    ql, qh, sc = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8)
    d = _from_fp16(b[:, 208:210].copy())
    lo = (ql.reshape(nb, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0xF
    hi = (qh.reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (lo.reshape(nb, 2, 4, 32) | (hi << 4)).astype(np.int8) - np.int8(32)
    scale = (d * sc.astype(F32))[:, :, None]
    return (scale * q.reshape(nb, 16, 16).astype(F32)).reshape(nb, QK_K)


def dequantize(name: str, data: np.ndarray, shape: tuple) -> np.ndarray:
    """Blocks (uint8, any shape holding rows * row bytes) → float32 of `shape`."""
    from .types import TYPES
    t = TYPES[name]
    data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if name == "f16":
        return data.view(np.float16).astype(F32).reshape(shape)
    if name == "bf16":
        return widen_bf16(data.view(np.uint16)).reshape(shape)
    return _dq(data.reshape(-1, t.nbytes), name).reshape(shape)
