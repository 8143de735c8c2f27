# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Llama 2 forward pass, as llama2.c's run.c (fp32) and runq.c (Q8_0) compute it.

Data flow per block of T tokens at positions pos..pos+T-1:
token table -> x (T, dim) -> for each layer: rmsnorm -> q/k/v -> RoPE -> k, v into
the cache -> attention -> wo -> residual -> rmsnorm -> w1, w3 -> SwiGLU -> w2 ->
residual; then final rmsnorm -> classifier -> logits.

`Transformer.forward` validates its arguments, then runs the whole block in one
`nogil` call. Weights are pointers into the memory-mapped file: nothing is
dequantized in full. Each matmul reads a weight row once per block of tokens.
"""
from cython.parallel cimport prange
from libc.math cimport sqrtf, expf, powf, cosf, sinf
from libc.stdint cimport int8_t, int32_t, uint32_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from qllama._kernels.nn cimport softmax

import numpy as np

cdef extern from "hugepages.h" nogil:
    void qllama_advise_huge(void* p, size_t bytes)


cdef extern from "simd.h" nogil:
    int QLLAMA_AVX2
    void q80_dot4(const int8_t* w, const float* ws, Py_ssize_t s_stride, const int8_t* xq,
                  const float* xs, Py_ssize_t n, Py_ssize_t gs, float* out)
    void f32_dot4(const float* w, const float* x, Py_ssize_t n, float* out)
    float f32_dot1(const float* w, const float* x, Py_ssize_t n)
    void q80_round_group(const float* x, Py_ssize_t n, float scale, int8_t* q)
    uint32_t abs_bits_no_nan "qllama_abs_bits_no_nan"(float f)
    float from_bits "qllama_from_bits"(uint32_t u)

AVX2 = bool(QLLAMA_AVX2)  # whether simd.h compiled its AVX2 + FMA kernels


cdef struct Matrix:
    const float* w          # fp32 weights (rows, cols), or NULL for Q8_0
    const int8_t* q         # Q8_0 values of the flattened tensor
    const float* s          # Q8_0 scales, one per group of the flattened tensor
    Py_ssize_t rows
    Py_ssize_t cols
    Py_ssize_t gs           # Q8_0 group size
    bint aligned            # gs divides cols: every group lies within one row


cdef struct Layer:
    const float* attn_norm  # (dim,)
    const float* ffn_norm   # (dim,)
    Matrix wq               # (n_heads * head_size, dim)
    Matrix wk               # (kv_dim, dim)
    Matrix wv               # (kv_dim, dim)
    Matrix wo               # (dim, n_heads * head_size)
    Matrix w1               # (hidden_dim, dim)
    Matrix w2               # (dim, hidden_dim)
    Matrix w3               # (hidden_dim, dim)


# ----------------------------------------------------------------------------
# Small kernels

cdef inline void rmsnorm(float* o, const float* x, const float* weight,
                         Py_ssize_t n) noexcept nogil:
    cdef float ss = 0.0
    cdef Py_ssize_t j
    for j in range(n):
        ss += x[j] * x[j]
    ss = ss / n + 1e-5
    ss = 1.0 / sqrtf(ss)
    for j in range(n):
        o[j] = weight[j] * (ss * x[j])


cdef inline void quantize_vector(const float* x, Py_ssize_t n, Py_ssize_t gs,
                                 int8_t* xq, float* xs) noexcept nogil:
    """Activations to Q8_0 like runq.c: scale = max|x|/127, round half away from zero.
    The max runs over the bit patterns of |x|, which gcc vectorizes; NaN is left out
    of it, as runq.c leaves it out (NaN values themselves become -127)."""
    cdef Py_ssize_t g, i
    cdef uint32_t wmax, b
    cdef float scale
    for g in range(n // gs):
        wmax = 0
        for i in range(g * gs, (g + 1) * gs):
            b = abs_bits_no_nan(x[i])
            wmax = b if b > wmax else wmax
        scale = from_bits(wmax) / 127.0
        xs[g] = scale
        if scale == 0.0:
            memset(&xq[g * gs], 0, gs)
        else:
            q80_round_group(&x[g * gs], gs, scale, &xq[g * gs])


cdef inline void norm_quantize_row(float* out, const float* x, const float* weight,
                                   Py_ssize_t n, Py_ssize_t gs, int8_t* xq,
                                   float* xs) noexcept nogil:
    if weight != NULL:
        rmsnorm(out, x, weight, n)
    if xq != NULL:
        quantize_vector(out, n, gs, xq, xs)


cdef void norm_quantize(float* out, const float* x, const float* weight, Py_ssize_t T,
                        Py_ssize_t n, Py_ssize_t gs, int8_t* xq, float* xs,
                        int threads) noexcept nogil:
    """Rows t < T: out = rmsnorm(x) (unless weight is NULL: out is the input), then
    its Q8_0 copy into xq/xs (unless xq is NULL). A block's rows go in parallel."""
    cdef Py_ssize_t t, ng = n // gs if gs else 0
    if T == 1:
        norm_quantize_row(out, x, weight, n, gs, xq, xs)
        return
    for t in prange(T, schedule="static", num_threads=threads):
        norm_quantize_row(out + t * n, x + t * n, weight, n, gs,
                          xq + t * n if xq != NULL else NULL,
                          xs + t * ng if xq != NULL else NULL)


cdef inline void rope_table(float* fcos, float* fsin, Py_ssize_t head_size,
                            Py_ssize_t pos) noexcept nogil:
    """cos and sin of pos * 10000^(-2i/head_size) for the head_size/2 pairs, computed
    in float32 as run.c does; shared by every head and layer of the position."""
    cdef Py_ssize_t i
    cdef float freq, val
    for i in range(head_size // 2):
        freq = 1.0 / powf(10000.0, <float>(2 * i) / <float>head_size)
        val = pos * freq
        fcos[i] = cosf(val)
        fsin[i] = sinf(val)


cdef inline void rope(float* vec, Py_ssize_t n, Py_ssize_t head_size, const float* fcos,
                      const float* fsin) noexcept nogil:
    """Rotate pairs (2i, 2i+1) within each head by the position's angles."""
    cdef Py_ssize_t i, j
    cdef float v0, v1
    for i in range(0, n, 2):
        j = (i % head_size) // 2
        v0 = vec[i]
        v1 = vec[i + 1]
        vec[i] = v0 * fcos[j] - v1 * fsin[j]
        vec[i + 1] = v0 * fsin[j] + v1 * fcos[j]


# ----------------------------------------------------------------------------
# Dot products of one weight row with one activation vector

cdef inline float dot_q80(const int8_t* wq, const float* ws, const int8_t* xq,
                          const float* xs, Py_ssize_t n, Py_ssize_t gs) noexcept nogil:
    """Row with groups aligned to it: int32 per group, then both scales (as runq.c)."""
    cdef float val = 0.0
    cdef int32_t ival
    cdef Py_ssize_t g, k
    for g in range(n // gs):
        ival = 0
        for k in range(g * gs, (g + 1) * gs):
            ival = ival + <int32_t>xq[k] * <int32_t>wq[k]
        val += (<float>ival) * ws[g] * xs[g]
    return val


cdef inline float dot_q80_flat(const int8_t* q, const float* s, Py_ssize_t start,
                               const float* x, Py_ssize_t n, Py_ssize_t gs) noexcept nogil:
    """Elements start..start+n-1 of a flattened Q8_0 tensor whose groups may cross
    rows: element f has scale s[f // gs]. fp32 activations (the general, slow path)."""
    cdef float val = 0.0, part
    cdef Py_ssize_t j = 0, end, k, g
    while j < n:
        g = (start + j) // gs
        end = (g + 1) * gs - start
        if end > n:
            end = n
        part = 0.0
        for k in range(j, end):
            part += <float>q[start + k] * x[k]
        val += part * s[g]
        j = end
    return val


cdef inline void matmul_rows(float* out, Py_ssize_t out_stride, const float* x,
                             Py_ssize_t x_stride, const int8_t* xq, const float* xs,
                             Py_ssize_t T, const Matrix* m, Py_ssize_t r0) noexcept nogil:
    """out[t, r] = row r of m . x[t] for rows r0..r0+3 (fewer at the end) and the T
    tokens of the block: the rows stay in L1 while every token passes over them."""
    cdef Py_ssize_t t, r, n = m.cols, gs = m.gs
    cdef Py_ssize_t ng = n // gs if gs else 0
    cdef Py_ssize_t nr = m.rows - r0 if m.rows - r0 < 4 else 4
    cdef bint four = nr == 4
    cdef float* o
    for t in range(T):
        o = out + t * out_stride + r0  # the 4-row kernels store straight into it
        if m.w != NULL:
            if four:
                f32_dot4(m.w + r0 * n, x + t * x_stride, n, o)
            else:
                for r in range(nr):
                    o[r] = f32_dot1(m.w + (r0 + r) * n, x + t * x_stride, n)
        elif m.aligned:
            if four and gs % 32 == 0:
                q80_dot4(m.q + r0 * n, m.s + r0 * ng, ng, xq + t * n, xs + t * ng, n, gs, o)
            else:
                for r in range(nr):
                    o[r] = dot_q80(m.q + (r0 + r) * n, m.s + (r0 + r) * ng,
                                   xq + t * n, xs + t * ng, n, gs)
        else:
            for r in range(nr):
                o[r] = dot_q80_flat(m.q, m.s, (r0 + r) * n, x + t * x_stride, n, gs)


cdef struct Job:  # one matmul of a fused parallel region: out (T, m.rows)
    const Matrix* m
    float* out
    Py_ssize_t out_stride


cdef void matmuls(const Job* jobs, int n_jobs, const float* x, Py_ssize_t x_stride,
                  const int8_t* xq, const float* xs, Py_ssize_t T, int threads) noexcept nogil:
    """Several matmuls of the same input (q, k, v) in one parallel region:
    their blocks of 4 rows are dealt out together, one fork and one join for all.
    Guided schedule: contiguous chunks that shrink towards the end, so a thread
    that streamed its rows more slowly (memory is not shared evenly) is not waited
    for; static halves left each thread ~20% of a decode step idle at the join."""
    cdef Py_ssize_t b, bb, total = 0
    cdef int j
    for j in range(n_jobs):
        total += (jobs[j].m.rows + 3) // 4
    for b in prange(total, schedule="guided", num_threads=threads):
        j = 0
        bb = b
        while bb >= (jobs[j].m.rows + 3) // 4:
            bb = bb - (jobs[j].m.rows + 3) // 4
            j = j + 1
        matmul_rows(jobs[j].out, jobs[j].out_stride, x, x_stride, xq, xs, T, jobs[j].m, 4 * bb)


cdef void swiglu(float* hb, float* hb2, const Matrix* w1, const Matrix* w3, const float* x,
                 Py_ssize_t x_stride, const int8_t* xq, const float* xs, Py_ssize_t T,
                 int threads) noexcept nogil:
    """hb (T, hidden) = silu(x @ w1^T) * (x @ w3^T). A thread computes rows r..r+3 of
    both matrices and gates them itself: one parallel region, and the expf work is
    shared out too."""
    cdef Py_ssize_t b, t, r, hidden = w1.rows
    cdef float v
    for b in prange((hidden + 3) // 4, schedule="guided", num_threads=threads):
        matmul_rows(hb, hidden, x, x_stride, xq, xs, T, w1, 4 * b)
        matmul_rows(hb2, hidden, x, x_stride, xq, xs, T, w3, 4 * b)
        for t in range(T):
            for r in range(4 * b, min(4 * b + 4, hidden)):
                v = hb[t * hidden + r]
                hb[t * hidden + r] = v * (1.0 / (1.0 + expf(-v))) * hb2[t * hidden + r]


cdef void matmul(float* out, Py_ssize_t out_stride, const float* x, Py_ssize_t x_stride,
                 const int8_t* xq, const float* xs, Py_ssize_t T, const Matrix* m,
                 int threads) noexcept nogil:
    """out (T, m.rows) with row stride out_stride = x (T, m.cols) @ m^T."""
    cdef Job job
    job.m = m
    job.out = out
    job.out_stride = out_stride
    matmuls(&job, 1, x, x_stride, xq, xs, T, threads)


cdef void embed_row(float* out, const Matrix* table, Py_ssize_t token) noexcept nogil:
    cdef Py_ssize_t j, n = table.cols, f
    if table.w != NULL:
        memcpy(out, table.w + token * n, n * sizeof(float))
    else:
        for j in range(n):
            f = token * n + j
            out[j] = table.q[f] * table.s[f // table.gs]


cdef void attention_head(float* out, const float* q, const float* keys,
                         const float* values, float* att, Py_ssize_t n_pos,
                         Py_ssize_t stride, Py_ssize_t head_size) noexcept nogil:
    """One head of one token over cached positions 0..n_pos-1, whose keys and values
    are at keys + p * stride and values + p * stride."""
    cdef Py_ssize_t p, i
    cdef float a
    cdef float scale = 1.0 / sqrtf(<float>head_size)
    cdef const float* v
    for p in range(n_pos):
        att[p] = f32_dot1(keys + p * stride, q, head_size) * scale
    softmax(att, n_pos)
    for i in range(head_size):
        out[i] = 0.0
    for p in range(n_pos):
        v = values + p * stride
        a = att[p]
        for i in range(head_size):
            out[i] += a * v[i]


# ----------------------------------------------------------------------------

cdef Matrix make_matrix(object tensor, Py_ssize_t gs) except *:
    """A Matrix over a mapped tensor: an fp32 ndarray or a formats.QTensor."""
    cdef Matrix m
    cdef const float[::1] w
    cdef const int8_t[::1] q
    cdef const float[::1] s
    memset(&m, 0, sizeof(Matrix))
    if isinstance(tensor, np.ndarray):
        m.rows, m.cols = tensor.shape
        w = tensor.reshape(-1)
        if m.rows <= 0 or m.cols <= 0 or w.shape[0] != m.rows * m.cols:
            raise ValueError("fp32 matrix does not match its shape")
        m.w = &w[0]
    else:
        m.rows, m.cols = tensor.shape
        q = tensor.q
        s = tensor.s
        if (m.rows <= 0 or m.cols <= 0 or gs <= 0 or q.shape[0] != m.rows * m.cols
                or (m.rows * m.cols) % gs or s.shape[0] != m.rows * m.cols // gs):
            raise ValueError("Q8_0 matrix does not match its shape and group size")
        m.q = &q[0]
        m.s = &s[0]
        m.gs = gs
        m.aligned = m.cols % gs == 0
    return m


cdef class Transformer:
    """Weights of one mapped checkpoint plus the run state for one sequence.

    `capacity` is how many positions the KV cache holds (prompt + steps, at most
    seq_len); `max_block` how many tokens one forward call takes.
    """
    cdef object model  # the ModelFile and its buffer: they keep the map (every pointer) alive
    cdef readonly int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
    cdef readonly int seq_len, head_size, kv_dim, group_size
    cdef readonly Py_ssize_t capacity, max_block
    cdef readonly bint quantized
    cdef public int threads
    cdef Layer* layers
    cdef Matrix tok_embeddings
    cdef Matrix classifier
    cdef const float* final_norm
    # run state
    cdef float* x            # (block, dim) residual stream
    cdef float* xb           # (block, max(dim, hidden)) normed / attention output
    cdef float* xb2          # (block, dim)
    cdef float* hb           # (block, hidden_dim)
    cdef float* hb2          # (block, hidden_dim)
    cdef float* q            # (block, dim)
    cdef float* fcos         # (block, head_size / 2) RoPE angles of the block's positions
    cdef float* fsin         # (block, head_size / 2)
    cdef float* att          # (n_heads * block, capacity) scores, a row per (head, token)
    cdef int8_t* xq          # (block, max(dim, hidden)) quantized activations
    cdef float* xs           # (block, max(dim, hidden) / gs) their scales
    cdef float* kb           # (block, kv_dim) the block's keys, before they go to the cache
    cdef float* vb           # (block, kv_dim) its values
    # KV cache (layer, kv head, capacity, head_size): a head's keys (values) for all
    # positions are one contiguous run, which attention reads as one stream
    cdef float* key_cache
    cdef float* value_cache

    def __cinit__(self):
        self.layers = NULL

    def __init__(self, model, Py_ssize_t capacity, Py_ssize_t max_block=32, int threads=1):
        """`model` is a validated formats.ModelFile (version 0, 1 or 2)."""
        c = model.config
        self.model = (model, model.buffer)
        self.dim, self.hidden_dim, self.n_layers = c.dim, c.hidden_dim, c.n_layers
        self.n_heads, self.n_kv_heads, self.vocab_size = c.n_heads, c.n_kv_heads, c.vocab_size
        self.seq_len, self.head_size, self.kv_dim = c.seq_len, c.head_size, c.kv_dim
        self.group_size = c.group_size
        self.quantized = c.version == 2
        if not 0 < capacity <= c.seq_len:
            raise ValueError(f"capacity {capacity} outside 1..seq_len {c.seq_len}")
        if max_block < 1:
            raise ValueError("max_block must be at least 1")
        self.capacity = capacity
        self.max_block = max_block
        self.threads = max(1, threads)
        gs = c.group_size
        self.layers = <Layer*>calloc(c.n_layers, sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError()
        cdef const float[::1] norm
        cdef int l
        for l in range(c.n_layers):
            norm = model.tensor("attention_norm", l)
            self.layers[l].attn_norm = &norm[0]
            norm = model.tensor("ffn_norm", l)
            self.layers[l].ffn_norm = &norm[0]
            self.layers[l].wq = make_matrix(model.tensor("wq", l), gs)
            self.layers[l].wk = make_matrix(model.tensor("wk", l), gs)
            self.layers[l].wv = make_matrix(model.tensor("wv", l), gs)
            self.layers[l].wo = make_matrix(model.tensor("wo", l), gs)
            self.layers[l].w1 = make_matrix(model.tensor("w1", l), gs)
            self.layers[l].w2 = make_matrix(model.tensor("w2", l), gs)
            self.layers[l].w3 = make_matrix(model.tensor("w3", l), gs)
        norm = model.tensor("norm")
        self.final_norm = &norm[0]
        self.tok_embeddings = make_matrix(model.tensor("tok_embeddings"), gs)
        if c.shared_classifier:
            self.classifier = self.tok_embeddings
        else:
            self.classifier = make_matrix(model.tensor("output"), gs)
        self._allocate()

    cdef _allocate(self):
        cdef Py_ssize_t B = self.max_block, wide = max(self.dim, self.hidden_dim)
        cdef Py_ssize_t cache = <Py_ssize_t>self.n_layers * self.capacity * self.kv_dim
        self.x = <float*>malloc(B * self.dim * sizeof(float))
        self.xb = <float*>malloc(B * wide * sizeof(float))
        self.xb2 = <float*>malloc(B * self.dim * sizeof(float))
        self.hb = <float*>malloc(B * self.hidden_dim * sizeof(float))
        self.hb2 = <float*>malloc(B * self.hidden_dim * sizeof(float))
        self.q = <float*>malloc(B * self.dim * sizeof(float))
        self.kb = <float*>malloc(B * self.kv_dim * sizeof(float))
        self.vb = <float*>malloc(B * self.kv_dim * sizeof(float))
        self.fcos = <float*>malloc(B * (self.head_size // 2) * sizeof(float))
        self.fsin = <float*>malloc(B * (self.head_size // 2) * sizeof(float))
        self.att = <float*>malloc(B * self.n_heads * self.capacity * sizeof(float))
        self.xq = <int8_t*>malloc(B * wide)
        self.xs = <float*>malloc(B * (wide // max(1, self.group_size) + 1) * sizeof(float))
        self.key_cache = <float*>calloc(cache, sizeof(float))
        self.value_cache = <float*>calloc(cache, sizeof(float))
        if (self.x == NULL or self.xb == NULL or self.xb2 == NULL or self.hb == NULL
                or self.hb2 == NULL or self.q == NULL or self.kb == NULL or self.vb == NULL
                or self.att == NULL
                or self.fcos == NULL or self.fsin == NULL
                or self.xq == NULL or self.xs == NULL or self.key_cache == NULL
                or self.value_cache == NULL):
            raise MemoryError(f"cannot allocate the run state ({self.kv_cache_bytes / 1e9:.2f} GB "
                              f"of KV cache for {self.capacity} positions); use fewer steps")
        qllama_advise_huge(self.key_cache, cache * sizeof(float))
        qllama_advise_huge(self.value_cache, cache * sizeof(float))

    def __dealloc__(self):
        free(self.layers)
        free(self.x); free(self.xb); free(self.xb2); free(self.hb); free(self.hb2)
        free(self.q); free(self.kb); free(self.vb); free(self.fcos); free(self.fsin)
        free(self.att); free(self.xq); free(self.xs)
        free(self.key_cache); free(self.value_cache)

    @property
    def kv_cache_bytes(self):
        return 2 * 4 * self.n_layers * self.capacity * self.kv_dim

    def forward(self, const int32_t[::1] tokens, Py_ssize_t pos, float[:, ::1] logits):
        """Run tokens (T <= max_block) at positions pos..pos+T-1, filling the cache.

        logits is (T, vocab) for every position's prediction, or (1, vocab) for
        the last one only.
        """
        cdef Py_ssize_t T = tokens.shape[0], t
        if not 0 < T <= self.max_block:
            raise ValueError(f"block of {T} tokens; must be 1..{self.max_block}")
        if pos < 0 or pos + T > self.capacity:
            raise ValueError(f"positions {pos}..{pos + T - 1} exceed the cache "
                             f"of {self.capacity}")
        if logits.shape[1] != self.vocab_size or logits.shape[0] not in (1, T):
            raise ValueError("logits buffer must be (T, vocab) or (1, vocab)")
        for t in range(T):
            if not 0 <= tokens[t] < self.vocab_size:
                raise ValueError(f"token id {tokens[t]} outside 0..{self.vocab_size - 1}")
        with nogil:
            self._forward(&tokens[0], T, pos, &logits[0, 0], logits.shape[0])

    cdef void _norm_quantize(self, float* out, const float* x, const float* weight,
                             Py_ssize_t T, Py_ssize_t n) noexcept nogil:
        """rmsnorm rows (weight not NULL) and, for aligned Q8_0 matmuls, quantize them;
        fp32 weights and groups that straddle rows take fp32 activations."""
        cdef bint q = self.quantized and n % self.group_size == 0
        norm_quantize(out, x, weight, T, n, self.group_size, self.xq if q else NULL,
                      self.xs if q else NULL, self.threads)

    cdef void _forward(self, const int32_t* tokens, Py_ssize_t T, Py_ssize_t pos,
                       float* logits, Py_ssize_t n_logits) noexcept nogil:
        cdef Py_ssize_t dim = self.dim, hidden = self.hidden_dim, kv_dim = self.kv_dim
        cdef Py_ssize_t hs = self.head_size, H = self.n_heads, cap = self.capacity
        cdef Py_ssize_t kv_mul = self.n_heads // self.n_kv_heads, kvh
        cdef Py_ssize_t t, l, i, th, h, first
        cdef int nt = self.threads
        cdef Layer* L
        cdef Job jobs[3]
        cdef float* kc
        cdef float* vc
        cdef float* fc
        cdef float* fs
        cdef float* q = self.q
        cdef float* xb = self.xb
        cdef float* att = self.att
        cdef float v

        for t in range(T):
            embed_row(self.x + t * dim, &self.tok_embeddings, tokens[t])
            rope_table(self.fcos + t * (hs // 2), self.fsin + t * (hs // 2), hs, pos + t)

        for l in range(self.n_layers):
            L = &self.layers[l]
            kc = self.key_cache + l * cap * kv_dim
            vc = self.value_cache + l * cap * kv_dim

            # attention: q, k, v; k and v (k rotated) then go to this layer's cache
            self._norm_quantize(self.xb, self.x, L.attn_norm, T, dim)
            jobs[0].m, jobs[0].out, jobs[0].out_stride = &L.wq, self.q, dim
            jobs[1].m, jobs[1].out, jobs[1].out_stride = &L.wk, self.kb, kv_dim
            jobs[2].m, jobs[2].out, jobs[2].out_stride = &L.wv, self.vb, kv_dim
            matmuls(jobs, 3, self.xb, dim, self.xq, self.xs, T, nt)
            for t in range(T):
                fc = self.fcos + t * (hs // 2)
                fs = self.fsin + t * (hs // 2)
                rope(self.q + t * dim, dim, hs, fc, fs)
                rope(self.kb + t * kv_dim, kv_dim, hs, fc, fs)
                for kvh in range(self.n_kv_heads):
                    memcpy(kc + (kvh * cap + pos + t) * hs, self.kb + t * kv_dim + kvh * hs,
                           hs * sizeof(float))
                    memcpy(vc + (kvh * cap + pos + t) * hs, self.vb + t * kv_dim + kvh * hs,
                           hs * sizeof(float))
            # head-major: a head's tokens run one after another while its keys and
            # values are in L2; contiguous ranges of heads per thread
            for th in prange(H * T, schedule="static", num_threads=nt):
                h = th // T
                t = th % T
                attention_head(xb + t * dim + h * hs, q + t * dim + h * hs,
                               kc + (h // kv_mul) * cap * hs, vc + (h // kv_mul) * cap * hs,
                               att + th * cap, pos + t + 1, hs, hs)
            self._norm_quantize(self.xb, self.xb, NULL, T, dim)
            matmul(self.xb2, dim, self.xb, dim, self.xq, self.xs, T, &L.wo, nt)
            for i in range(T * dim):
                self.x[i] += self.xb2[i]

            # feed-forward: w2(silu(w1 x) * w3 x)
            self._norm_quantize(self.xb, self.x, L.ffn_norm, T, dim)
            swiglu(self.hb, self.hb2, &L.w1, &L.w3, self.xb, dim, self.xq, self.xs, T, nt)
            self._norm_quantize(self.hb, self.hb, NULL, T, hidden)
            matmul(self.xb, dim, self.hb, hidden, self.xq, self.xs, T, &L.w2, nt)
            for i in range(T * dim):
                self.x[i] += self.xb[i]

        # classifier over the last n_logits positions of the block
        first = T - n_logits
        self._norm_quantize(self.xb, self.x + first * dim, self.final_norm, n_logits, dim)
        matmul(logits, self.vocab_size, self.xb, dim, self.xq, self.xs, n_logits,
               &self.classifier, nt)


# ----------------------------------------------------------------------------
# Thin Python entry points to single kernels, for the tests' numpy references.

def kernel_rmsnorm(const float[::1] x, const float[::1] weight):
    if x.shape[0] != weight.shape[0] or x.shape[0] == 0:
        raise ValueError("x and weight must have the same non-zero length")
    out = np.empty(x.shape[0], np.float32)
    cdef float[::1] o = out
    rmsnorm(&o[0], &x[0], &weight[0], x.shape[0])
    return out


def kernel_softmax(float[::1] x):
    if x.shape[0] == 0:
        raise ValueError("empty vector")
    softmax(&x[0], x.shape[0])


def kernel_rope(float[::1] vec, Py_ssize_t head_size, Py_ssize_t pos):
    if head_size <= 0 or head_size % 2 or vec.shape[0] % head_size or pos < 0:
        raise ValueError("vector length must be a multiple of an even head size")
    fcos = np.empty(head_size // 2, np.float32)
    fsin = np.empty(head_size // 2, np.float32)
    cdef float[::1] c = fcos
    cdef float[::1] s = fsin
    rope_table(&c[0], &s[0], head_size, pos)
    rope(&vec[0], vec.shape[0], head_size, &c[0], &s[0])


def kernel_quantize(const float[::1] x, Py_ssize_t gs):
    """Activations x (length a multiple of gs) to (int8 values, one scale per group)."""
    if gs <= 0 or x.shape[0] == 0 or x.shape[0] % gs:
        raise ValueError("x must be a non-empty whole number of groups")
    q = np.empty(x.shape[0], np.int8)
    s = np.empty(x.shape[0] // gs, np.float32)
    cdef int8_t[::1] qv = q
    cdef float[::1] sv = s
    quantize_vector(&x[0], x.shape[0], gs, &qv[0], &sv[0])
    return q, s


def kernel_matmul(tensor, const float[:, ::1] x, int threads=1):
    """x (T, cols) @ tensor^T for an fp32 ndarray or a formats.QTensor (any group size)."""
    cdef Matrix m = make_matrix(tensor, getattr(tensor, "group_size", 0))
    cdef Py_ssize_t T = x.shape[0], n = m.cols, gs = m.gs
    if x.shape[1] != n or T == 0:
        raise ValueError("x must be (T > 0, cols)")
    out = np.empty((T, m.rows), np.float32)
    cdef float[:, ::1] o = out
    cdef int8_t[::1] xq = np.zeros(T * n, np.int8)
    cdef float[::1] xs = np.zeros(T * (n // gs if gs else 0) + 1, np.float32)
    cdef Py_ssize_t t
    if m.w == NULL and m.aligned:
        for t in range(T):
            quantize_vector(&x[t, 0], n, gs, &xq[t * n], &xs[t * (n // gs)])
    with nogil:
        matmul(&o[0, 0], m.rows, &x[0, 0], n, &xq[0], &xs[0], T, &m, threads)
    return out


def kernel_attention(const float[::1] q, const float[:, ::1] key_cache,
                     const float[:, ::1] value_cache, Py_ssize_t head_size,
                     Py_ssize_t kv_offset):
    """One head over all rows of the caches (n_pos, kv_dim)."""
    cdef Py_ssize_t n_pos = key_cache.shape[0], kv_dim = key_cache.shape[1]
    if (n_pos == 0 or value_cache.shape[0] != n_pos or value_cache.shape[1] != kv_dim
            or q.shape[0] != head_size or kv_offset < 0 or kv_offset + head_size > kv_dim):
        raise ValueError("inconsistent attention shapes")
    out = np.empty(head_size, np.float32)
    att = np.empty(n_pos, np.float32)
    cdef float[::1] o = out
    cdef float[::1] a = att
    attention_head(&o[0], &q[0], &key_cache[0, kv_offset], &value_cache[0, kv_offset], &a[0],
                   n_pos, kv_dim, head_size)
    return out
