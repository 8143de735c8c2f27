# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Llama 2 forward pass, as llama2.c's run.c (fp32) and runq.c (Q8_0) compute it.

Data flow per block of T tokens at positions pos..pos+T-1:
token table -> x (T, dim) -> for each layer: rmsnorm -> q/k/v -> RoPE -> k, v into
the cache -> attention -> wo -> residual -> rmsnorm -> w1, w3 -> SwiGLU -> w2 ->
residual; then final rmsnorm -> classifier -> logits.

- `Weights`: the mapped tensors of one checkpoint (Config / TransformerWeights in
  run.c) and, for each matrix, the kernel that multiplies by it, chosen once
  (`make_matrix`) from the CPU variant's table (kernels.h). Sessions share it.
- `KVCache`: KV memory in pages; a sequence is a table of pages.
- `Workspace`: the scratch of forward passes (run.c's RunState less its cache);
  `Workspace.forward` runs a block of rows, of one sequence or many, each at its own
  position over its own pages: it validates its arguments, then runs the whole block
  in one `nogil` call.
- `State`: one sequence: a Workspace and a KV cache of one page.
- `Kernels`: a variant's kernels one by one, for checks and benchmarks.

Weights are pointers into the memory-mapped file: nothing is dequantized in full.
Each matmul reads a weight row once per block of tokens.
"""
from cython.parallel cimport prange
from libc.math cimport sqrtf
from libc.stdint cimport int8_t, int32_t, uint16_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from qllama._kernels.kernels cimport (qllama_acts, qllama_kernels, qllama_matmul_fn,
                                      qllama_matrix, qllama_variant, qllama_variants,
                                      qllama_cpu_features, qllama_amx_permit,
                                      qllama_q80_flat_matmul, qllama_f16_to_f32)
from qllama._kernels.ops cimport rmsnorm, rope, rope_table, silu, softmax

import numpy as np

from qllama.threads import MAX_THREADS

cdef extern from "hugepages.h" nogil:
    void qllama_advise_huge(void* p, size_t bytes)
    void qllama_prefault(void* p, size_t bytes)


# ----------------------------------------------------------------------------
# Variants: what this build compiled and what this CPU offers (qllama/kernels.py
# decides which one runs)

FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
            "avx512vnni", "avxvnni", "amx_tile", "amx_int8", "neon", "dotprod")  # cpu.h order


def cpu_features():
    """The instruction sets this CPU and OS support, as names (cpu.h)."""
    cdef uint64_t bits = qllama_cpu_features()
    return [name for i, name in enumerate(FEATURES) if bits >> i & 1]


def compiled_variants():
    """[(name, [features it needs])] for every variant in this build."""
    cdef int n, i
    cdef const qllama_variant* v = qllama_variants(&n)
    return [(v[i].name.decode(), [f for j, f in enumerate(FEATURES) if v[i].needs >> j & 1])
            for i in range(n)]


def amx_permit():
    """Ask Linux for the AMX tile state (arch_prctl); True when granted."""
    return bool(qllama_amx_permit())


cdef const qllama_kernels* variant_table(str name) except NULL:
    """The table of a compiled variant this CPU runs: qllama/kernels.py chooses, and
    this check keeps the engine's own entry points (Weights, Kernels) from SIGILL."""
    cdef int n, i
    cdef const qllama_variant* v = qllama_variants(&n)
    for i in range(n):
        if v[i].name.decode() == name:
            if v[i].needs & ~qllama_cpu_features():
                raise ValueError(f"kernel variant {name!r} needs CPU features this CPU lacks")
            if name == "amx" and not qllama_amx_permit():
                raise ValueError("kernel variant 'amx': the OS refused the AMX tile state")
            return v[i].table
    raise ValueError(f"kernel variant {name!r} is not in this build")


# ----------------------------------------------------------------------------
# Matrices and the choice of their kernel

cdef struct Matrix:
    qllama_matrix m
    qllama_matmul_fn fn     # multiplies by this matrix on this CPU
    bint q8_input           # fn takes quantized activations (else fp32)


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


# A group's int32 sum (kernels.h) is exact while gs * 128 * 127 < 2^31; a larger group
# (a file may declare any group size dividing its tensors) would wrap.
cdef enum:
    Q80_MAX_GROUP = 131072


cdef Matrix make_matrix(object tensor, Py_ssize_t gs, const qllama_kernels* k) except *:
    """A Matrix over a mapped tensor (an fp32 ndarray or a formats.llama2c.QTensor),
    with its kernel: the one place where a kernel is chosen for a matrix."""
    cdef Matrix mat
    cdef const float[::1] w
    cdef const int8_t[::1] q
    cdef const float[::1] s
    memset(&mat, 0, sizeof(Matrix))
    mat.m.rows, mat.m.cols = tensor.shape
    if isinstance(tensor, np.ndarray):
        w = tensor.reshape(-1)
        if mat.m.rows <= 0 or mat.m.cols <= 0 or w.shape[0] != mat.m.rows * mat.m.cols:
            raise ValueError("fp32 matrix does not match its shape")
        mat.m.w = &w[0]
        mat.fn = k.f32_matmul
        return mat
    q = tensor.q
    s = tensor.s
    if (mat.m.rows <= 0 or mat.m.cols <= 0 or gs <= 0 or q.shape[0] != mat.m.rows * mat.m.cols
            or (mat.m.rows * mat.m.cols) % gs or s.shape[0] != mat.m.rows * mat.m.cols // gs):
        raise ValueError("Q8_0 matrix does not match its shape and group size")
    mat.m.q = &q[0]
    mat.m.s = &s[0]
    mat.m.gs = gs
    if mat.m.cols % gs == 0 and gs <= Q80_MAX_GROUP:  # groups within rows: int8 dot products
        mat.fn = k.q80_matmul
        mat.q8_input = True
    else:  # groups straddle rows (or overflow int32): the format's definition, fp32 input
        mat.fn = qllama_q80_flat_matmul
    return mat


cdef struct Net:  # what the forward pass reads of the weights, without the GIL
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
    int seq_len, head_size, kv_dim, group_size
    const qllama_kernels* kernels
    Layer* layers
    Matrix tok_embeddings
    Matrix classifier       # the token table itself when the classifier is shared
    const float* final_norm


cdef class Weights:
    """One mapped checkpoint's tensors and each matrix's kernel, for `variant`."""
    cdef object model  # the ModelFile and its buffer: they keep the map (every pointer) alive
    cdef Net net
    cdef readonly str variant

    def __cinit__(self):
        self.net.layers = NULL

    def __init__(self, model, str variant):
        """`model` is a validated formats.llama2c.ModelFile (version 0, 1 or 2)."""
        c = model.config
        cdef Net* n = &self.net
        self.model = (model, model.buffer)
        n.dim, n.hidden_dim, n.n_layers = c.dim, c.hidden_dim, c.n_layers
        n.n_heads, n.n_kv_heads, n.vocab_size = c.n_heads, c.n_kv_heads, c.vocab_size
        n.seq_len, n.head_size, n.kv_dim = c.seq_len, c.head_size, c.kv_dim
        n.group_size = c.group_size
        self.variant = variant
        n.kernels = variant_table(variant)
        cdef const qllama_kernels* k = n.kernels
        gs = c.group_size
        n.layers = <Layer*>calloc(c.n_layers, sizeof(Layer))
        if n.layers == NULL:
            raise MemoryError()
        cdef const float[::1] norm
        cdef int l
        for l in range(c.n_layers):
            norm = model.tensor("attention_norm", l)
            n.layers[l].attn_norm = &norm[0]
            norm = model.tensor("ffn_norm", l)
            n.layers[l].ffn_norm = &norm[0]
            n.layers[l].wq = make_matrix(model.tensor("wq", l), gs, k)
            n.layers[l].wk = make_matrix(model.tensor("wk", l), gs, k)
            n.layers[l].wv = make_matrix(model.tensor("wv", l), gs, k)
            n.layers[l].wo = make_matrix(model.tensor("wo", l), gs, k)
            n.layers[l].w1 = make_matrix(model.tensor("w1", l), gs, k)
            n.layers[l].w2 = make_matrix(model.tensor("w2", l), gs, k)
            n.layers[l].w3 = make_matrix(model.tensor("w3", l), gs, k)
        norm = model.tensor("norm")
        n.final_norm = &norm[0]
        n.tok_embeddings = make_matrix(model.tensor("tok_embeddings"), gs, k)
        if c.shared_classifier:
            n.classifier = n.tok_embeddings
        else:
            n.classifier = make_matrix(model.tensor("output"), gs, k)

    @property
    def seq_len(self):
        return self.net.seq_len

    @property
    def vocab_size(self):
        return self.net.vocab_size

    def __dealloc__(self):
        free(self.net.layers)


# ----------------------------------------------------------------------------
# Parallel drivers: a matmul's rows are dealt out in blocks of the variant's row_block

cdef struct Job:  # one matmul of a fused parallel region: out (T, m.rows)
    const Matrix* m
    float* out
    Py_ssize_t out_stride


cdef inline void run_rows(const Matrix* m, Py_ssize_t r0, Py_ssize_t rb, const qllama_acts* x,
                          float* out, Py_ssize_t out_stride) noexcept nogil:
    cdef Py_ssize_t r1 = r0 + rb if r0 + rb < m.m.rows else m.m.rows
    m.fn(&m.m, r0, r1, x, out, out_stride)


cdef void matmuls(const Job* jobs, int n_jobs, const qllama_acts* x, Py_ssize_t rb,
                  int threads) noexcept nogil:
    """Several matmuls of the same input (q, k, v) in one parallel region: their
    blocks of rb rows are dealt out together, one fork and one join for all.
    Guided schedule: contiguous chunks that shrink towards the end, so a thread
    that streamed its rows more slowly (memory is not shared evenly) is not waited
    for; static halves left each thread ~20% of a decode step idle at the join."""
    cdef Py_ssize_t b, bb, total = 0
    cdef int j
    for j in range(n_jobs):
        total += (jobs[j].m.m.rows + rb - 1) // rb
    for b in prange(total, schedule="guided", num_threads=threads):
        j = 0
        bb = b
        while bb >= (jobs[j].m.m.rows + rb - 1) // rb:
            bb = bb - (jobs[j].m.m.rows + rb - 1) // rb
            j = j + 1
        run_rows(jobs[j].m, rb * bb, rb, x, jobs[j].out, jobs[j].out_stride)


cdef void matmul(float* out, Py_ssize_t out_stride, const qllama_acts* x, const Matrix* m,
                 Py_ssize_t rb, int threads) noexcept nogil:
    """out (T, m.rows) with row stride out_stride = x (T, m.cols) @ m^T."""
    cdef Job job
    job.m = m
    job.out = out
    job.out_stride = out_stride
    matmuls(&job, 1, x, rb, threads)


cdef void swiglu(float* hb, float* hb2, const Matrix* w1, const Matrix* w3,
                 const qllama_acts* x, Py_ssize_t rb, int threads) noexcept nogil:
    """hb (T, hidden) = silu(x @ w1^T) * (x @ w3^T). A thread computes a block of rows
    of both matrices and gates them itself: one parallel region, and the expf work
    is shared out too."""
    cdef Py_ssize_t b, t, r, hidden = w1.m.rows
    for b in prange((hidden + rb - 1) // rb, schedule="guided", num_threads=threads):
        run_rows(w1, rb * b, rb, x, hb, hidden)
        run_rows(w3, rb * b, rb, x, hb2, hidden)
        for t in range(x.T):
            for r in range(rb * b, min(rb * b + rb, hidden)):
                hb[t * hidden + r] = silu(hb[t * hidden + r]) * hb2[t * hidden + r]


cdef void prepare(qllama_acts* x, float* out, const float* inp, const float* weight,
                  Py_ssize_t T, Py_ssize_t n, Py_ssize_t gs, int8_t* xq, float* xs,
                  void* packed, bint q8, const qllama_kernels* k, int threads) noexcept nogil:
    """The input of a matmul: rows t < T of out = rmsnorm(inp) (or inp itself when
    weight is NULL and out is inp), then, when the matrix takes them (q8), their
    Q8_0 copy in xq/xs, and for a block of tokens the variant's packed layout of it
    (once here, not once per row block). A block's rows go in parallel."""
    cdef Py_ssize_t t, ng = n // gs if gs else 0
    if T == 1:
        if weight != NULL:
            rmsnorm(out, inp, weight, n)
        if q8:
            k.quantize_row(out, n, gs, xq, xs)
    else:
        for t in prange(T, schedule="static", num_threads=threads):
            if weight != NULL:
                rmsnorm(out + t * n, inp + t * n, weight, n)
            if q8:
                k.quantize_row(out + t * n, n, gs, xq + t * n, xs + t * ng)
    x.x = out
    x.x_stride = n
    x.q = xq
    x.s = xs
    x.T = T
    x.n = n
    x.gs = gs
    x.packed = NULL
    if q8 and T > 1 and packed != NULL and k.q80_pack != NULL:
        k.q80_pack(x, packed)
        x.packed = packed


cdef void embed_row(float* out, const Matrix* table, Py_ssize_t token) noexcept nogil:
    cdef Py_ssize_t j, n = table.m.cols, f
    if table.m.w != NULL:
        memcpy(out, table.m.w + token * n, n * sizeof(float))
    else:
        for j in range(n):
            f = token * n + j
            out[j] = table.m.q[f] * table.m.s[f // table.m.gs]


cdef void attention_head(float* out, const float* q, const char* keys, const char* values,
                         const int32_t* table, Py_ssize_t page_bytes, Py_ssize_t page_size,
                         float* att, Py_ssize_t n_pos, Py_ssize_t head_size, bint f16,
                         const qllama_kernels* k) noexcept nogil:
    """One head of one token over cached positions 0..n_pos-1, held in the pages
    table[0], table[1], ...: in each, the head's keys (values) for page_size positions
    are contiguous rows of head_size, fp16 or fp32, at keys (values) + page * page_bytes.
    Scores page by page, one softmax over all, values accumulated page by page in
    position order: the same operations whatever the page size (kernels.h)."""
    cdef float scale = 1.0 / sqrtf(<float>head_size)
    cdef Py_ssize_t j, n, at
    for j in range((n_pos + page_size - 1) // page_size):
        n = min(page_size, n_pos - j * page_size)
        at = table[j] * page_bytes
        if f16:
            k.attn_scores_f16(q, <const uint16_t*>(keys + at), n, head_size, scale,
                              att + j * page_size)
        else:
            k.attn_scores_f32(q, <const float*>(keys + at), n, head_size, scale,
                              att + j * page_size)
    softmax(att, n_pos)
    memset(out, 0, head_size * sizeof(float))
    for j in range((n_pos + page_size - 1) // page_size):
        n = min(page_size, n_pos - j * page_size)
        at = table[j] * page_bytes
        if f16:
            k.attn_values_f16(att + j * page_size, <const uint16_t*>(values + at), n,
                              head_size, out)
        else:
            k.attn_values_f32(att + j * page_size, <const float*>(values + at), n,
                              head_size, out)


cdef inline void kv_store(void* cache, Py_ssize_t at, const float* x, Py_ssize_t n, bint f16,
                          const qllama_kernels* k) noexcept nogil:
    """n values of x into cache entries at..at+n-1 (fp16: rounded to nearest even)."""
    if f16:
        k.f16_store(x, <uint16_t*>cache + at, n)
    else:
        memcpy(<float*>cache + at, x, n * sizeof(float))


cdef void* zeroed(size_t nbytes, bint huge=False, bint fault=True) noexcept nogil:
    """A zeroed buffer with every page faulted in now (`fault`): a fault in the middle
    of a forward pass (a fresh session's first block) holds every thread at the next
    join. `huge`: advised 2 MiB pages (the KV cache, which attention streams)."""
    cdef void* p = calloc(nbytes, 1)
    if p != NULL:
        if huge:
            qllama_advise_huge(p, nbytes)
        if fault:
            qllama_prefault(p, nbytes)
    return p


# ----------------------------------------------------------------------------

cdef class KVCache:
    """KV cache memory in pages of `page_size` positions. A page holds, for every layer
    and kv head (in that order), page_size rows of head_size keys, and the same of
    values, fp16 ("f16", kernels.h's rounding) or fp32: a head's keys in a page are
    one contiguous run, which attention reads as one stream. A sequence holds a table
    of pages (position p is in its page p // page_size); one page of a sequence's whole
    capacity is State's cache. `fault`: fault every page in now (else as first used:
    a pool of pages is resident only as far as sequences have used it)."""
    cdef readonly Weights weights
    cdef readonly Py_ssize_t page_size, n_pages
    cdef readonly str kv
    cdef bint kv16
    cdef size_t item          # bytes per entry: 2 (fp16) or 4
    cdef Py_ssize_t page_entries
    cdef void* keys
    cdef void* values

    def __init__(self, Weights weights, Py_ssize_t page_size, Py_ssize_t n_pages,
                 str kv="f16", bint fault=True):
        if kv not in ("f16", "f32"):
            raise ValueError(f"kv cache type {kv!r}: must be 'f16' or 'f32'")
        if not 0 < page_size <= weights.net.seq_len or n_pages < 1:
            raise ValueError(f"page size {page_size} outside 1..seq_len, or no pages")
        self.weights = weights
        self.page_size, self.n_pages, self.kv = page_size, n_pages, kv
        self.kv16 = kv == "f16"
        self.item = 2 if self.kv16 else 4
        self.page_entries = weights.net.n_layers * page_size * weights.net.kv_dim
        # in Python's integers: a product that wrapped would allocate too little
        if <object>self.page_entries * n_pages * self.item >= 2 ** 62:
            raise MemoryError(f"a KV cache of {n_pages} pages of {page_size} positions "
                              "is too large")
        cdef size_t nbytes = self.page_entries * n_pages * self.item
        self.keys = zeroed(nbytes, True, fault)
        self.values = zeroed(nbytes, True, fault)
        if self.keys == NULL or self.values == NULL:
            raise MemoryError(f"cannot allocate {2 * nbytes / 1e9:.2f} GB of KV cache")

    def __dealloc__(self):
        free(self.keys)
        free(self.values)

    @property
    def nbytes(self):
        return 2 * self.page_entries * self.n_pages * self.item

    @property
    def page_bytes(self):
        return 2 * self.page_entries * self.item


cdef class Workspace:
    """The scratch of forward passes over `weights`: blocks of up to `max_rows` rows
    (tokens of one or many sequences) at positions below `max_positions`, with
    `threads` OpenMP threads. It belongs to whoever runs the engine (a session, the
    server's engine thread), not to a sequence: a sequence is its pages alone."""
    cdef readonly Weights weights  # keeps `net` alive
    cdef const Net* net
    cdef readonly Py_ssize_t max_rows, max_positions
    cdef int n_threads       # OpenMP threads per parallel region (the `threads` property)
    cdef float* x            # (rows, dim) residual stream
    cdef float* xb           # (rows, max(dim, hidden)) normed / attention output
    cdef float* xb2          # (rows, dim); the classifier's rows, gathered
    cdef float* hb           # (rows, hidden_dim)
    cdef float* hb2          # (rows, hidden_dim)
    cdef float* q            # (rows, dim)
    cdef float* fcos         # (rows, head_size / 2) RoPE angles of the rows' positions
    cdef float* fsin         # (rows, head_size / 2)
    cdef float* att          # (n_heads * rows, max_positions) scores, a row per (head, row)
    cdef int8_t* xq          # (rows, max(dim, hidden)) quantized activations
    cdef float* xs           # (rows, max(dim, hidden) / gs) their scales
    cdef void* packed        # the variant's GEMM layout of xq / xs (NULL: none)
    cdef float* kb           # (rows, kv_dim) the rows' keys, before they go to the cache
    cdef float* vb           # (rows, kv_dim) their values

    def __init__(self, Weights weights, Py_ssize_t max_rows, Py_ssize_t max_positions,
                 int threads=1):
        if not 0 < max_positions <= weights.net.seq_len:
            raise ValueError(f"max_positions {max_positions} outside 1..seq_len "
                             f"{weights.net.seq_len}")
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.weights = weights
        self.net = &weights.net
        self.max_rows = max_rows
        self.max_positions = max_positions
        self.threads = max(1, threads)
        self._allocate()

    cdef _allocate(self):
        cdef const Net* w = self.net
        cdef const qllama_kernels* k = w.kernels
        cdef Py_ssize_t B = self.max_rows, wide = max(w.dim, w.hidden_dim)
        cdef size_t packed = 0
        cdef object b = B  # the largest sizes in Python's integers, as in KVCache
        if max(b * wide, b * w.n_heads * self.max_positions) * 4 >= 2 ** 62:
            raise MemoryError(f"run state for {self.max_positions} positions and blocks of "
                              f"{B} tokens is too large")
        if w.group_size and B > 1 and k.q80_packed_bytes != NULL:
            packed = max(k.q80_packed_bytes(B, w.dim, w.group_size) if w.dim % w.group_size == 0
                         else 0,
                         k.q80_packed_bytes(B, w.hidden_dim, w.group_size)
                         if w.hidden_dim % w.group_size == 0 else 0)
        self.x = <float*>zeroed(B * w.dim * sizeof(float))
        self.xb = <float*>zeroed(B * wide * sizeof(float))
        self.xb2 = <float*>zeroed(B * w.dim * sizeof(float))
        self.hb = <float*>zeroed(B * w.hidden_dim * sizeof(float))
        self.hb2 = <float*>zeroed(B * w.hidden_dim * sizeof(float))
        self.q = <float*>zeroed(B * w.dim * sizeof(float))
        self.kb = <float*>zeroed(B * w.kv_dim * sizeof(float))
        self.vb = <float*>zeroed(B * w.kv_dim * sizeof(float))
        self.fcos = <float*>zeroed(B * (w.head_size // 2) * sizeof(float))
        self.fsin = <float*>zeroed(B * (w.head_size // 2) * sizeof(float))
        self.att = <float*>zeroed(B * w.n_heads * self.max_positions * sizeof(float))
        self.xq = <int8_t*>zeroed(B * wide)
        self.xs = <float*>zeroed(B * (wide // max(1, w.group_size) + 1) * sizeof(float))
        self.packed = zeroed(packed) if packed else NULL
        if (self.x == NULL or self.xb == NULL or self.xb2 == NULL or self.hb == NULL
                or self.hb2 == NULL or self.q == NULL or self.kb == NULL or self.vb == NULL
                or self.att == NULL or self.fcos == NULL or self.fsin == NULL
                or self.xq == NULL or self.xs == NULL or (packed and self.packed == NULL)):
            raise MemoryError(f"cannot allocate the scratch for blocks of {B} tokens")

    def __dealloc__(self):
        free(self.x); free(self.xb); free(self.xb2); free(self.hb); free(self.hb2)
        free(self.q); free(self.kb); free(self.vb); free(self.fcos); free(self.fsin)
        free(self.att); free(self.xq); free(self.xs); free(self.packed)

    @property
    def threads(self):
        return self.n_threads

    @threads.setter
    def threads(self, int n):
        # libgomp aborts (or crashes) on a thread count it cannot create: -1 asks for
        # 2^32 - 1 threads
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"threads {n} outside 1..{MAX_THREADS}")
        self.n_threads = n

    def forward(self, KVCache cache, const int32_t[::1] tokens, const int32_t[::1] positions,
                const int32_t[::1] seq, const int32_t[:, ::1] tables,
                const int32_t[::1] logit_rows, float[:, ::1] logits):
        """Run rows t < T: token tokens[t] of sequence seq[t] at position positions[t],
        whose pages are tables[seq[t]] in `cache`; each row's key and value go to the
        cache, and it attends to its sequence's positions 0..positions[t] (earlier rows
        of the block included). logits[i] gets the prediction of row logit_rows[i].

        Everything is checked here, before the nogil pass: rows, tokens, positions,
        every page a row touches, the logits rows. A sequence's rows give the same
        numbers bit for bit in any block, alone or with others, in any order."""
        cdef const Net* w = self.net
        cdef Py_ssize_t T = tokens.shape[0], t, j, pages, ps = cache.page_size
        cdef Py_ssize_t L = logit_rows.shape[0], vocab = w.vocab_size
        if cache.weights is not self.weights:
            raise ValueError("the KV cache belongs to other weights")
        if not 0 < T <= self.max_rows:
            raise ValueError(f"block of {T} rows; must be 1..{self.max_rows}")
        if positions.shape[0] != T or seq.shape[0] != T:
            raise ValueError("tokens, positions and seq must have one entry per row")
        if logits.shape[0] != L or logits.shape[1] != vocab or L == 0:
            raise ValueError("logits must be (len(logit_rows) > 0, vocab)")
        for t in range(T):
            if not 0 <= tokens[t] < vocab:
                raise ValueError(f"token id {tokens[t]} outside 0..{vocab - 1}")
            if not 0 <= positions[t] < self.max_positions:
                raise ValueError(f"position {positions[t]} outside 0..{self.max_positions - 1}")
            if not 0 <= seq[t] < tables.shape[0]:
                raise ValueError(f"row {t}: sequence {seq[t]} has no page table")
            pages = positions[t] // ps + 1
            if pages > tables.shape[1]:
                raise ValueError(f"row {t}: position {positions[t]} is past its page table")
            for j in range(pages):
                if not 0 <= tables[seq[t], j] < cache.n_pages:
                    raise ValueError(f"row {t}: page {tables[seq[t], j]} outside the cache's "
                                     f"{cache.n_pages}")
        for j in range(L):
            if not 0 <= logit_rows[j] < T:
                raise ValueError(f"logits row {logit_rows[j]} outside 0..{T - 1}")
        with nogil:
            self._forward(cache, &tokens[0], &positions[0], &seq[0], &tables[0, 0],
                          tables.shape[1], T, &logit_rows[0], L, &logits[0, 0])

    cdef void _forward(self, KVCache cache, const int32_t* tokens, const int32_t* positions,
                       const int32_t* seq, const int32_t* tables, Py_ssize_t table_width,
                       Py_ssize_t T, const int32_t* logit_rows, Py_ssize_t n_logits,
                       float* logits) noexcept nogil:
        cdef const Net* w = self.net
        cdef const qllama_kernels* k = w.kernels
        cdef Py_ssize_t dim = w.dim, hidden = w.hidden_dim, kv_dim = w.kv_dim, gs = w.group_size
        cdef Py_ssize_t hs = w.head_size, H = w.n_heads, rb = k.row_block
        cdef Py_ssize_t kv_mul = w.n_heads // w.n_kv_heads, kvh
        cdef Py_ssize_t ps = cache.page_size, maxp = self.max_positions
        cdef Py_ssize_t page_entries = cache.page_entries, head_run = ps * hs
        cdef Py_ssize_t t, l, i, th, h, at, pos
        cdef int nt = self.n_threads
        cdef bint f16 = cache.kv16
        cdef size_t item = cache.item
        cdef const Layer* L
        cdef Job jobs[3]
        cdef qllama_acts xa
        cdef float* fc
        cdef float* fs
        cdef float* q = self.q
        cdef float* xb = self.xb
        cdef float* att = self.att
        cdef char* kc = <char*>cache.keys
        cdef char* vc = <char*>cache.values

        for t in range(T):
            embed_row(self.x + t * dim, &w.tok_embeddings, tokens[t])
            rope_table(self.fcos + t * (hs // 2), self.fsin + t * (hs // 2), hs, positions[t])

        for l in range(w.n_layers):
            L = &w.layers[l]

            # attention: q, k, v; k and v (k rotated) then go to the rows' pages
            prepare(&xa, xb, self.x, L.attn_norm, T, dim, gs, self.xq, self.xs, self.packed,
                    L.wq.q8_input, k, nt)
            jobs[0].m, jobs[0].out, jobs[0].out_stride = &L.wq, self.q, dim
            jobs[1].m, jobs[1].out, jobs[1].out_stride = &L.wk, self.kb, kv_dim
            jobs[2].m, jobs[2].out, jobs[2].out_stride = &L.wv, self.vb, kv_dim
            matmuls(jobs, 3, &xa, rb, nt)
            for t in range(T):
                fc = self.fcos + t * (hs // 2)
                fs = self.fsin + t * (hs // 2)
                rope(self.q + t * dim, dim, hs, fc, fs)
                rope(self.kb + t * kv_dim, kv_dim, hs, fc, fs)
                pos = positions[t]
                # entry of (page, layer l, kv head 0, slot pos % ps); a kv head is head_run on
                at = (tables[seq[t] * table_width + pos // ps] * page_entries
                      + l * ps * kv_dim + (pos % ps) * hs)
                for kvh in range(w.n_kv_heads):
                    kv_store(cache.keys, at + kvh * head_run, self.kb + t * kv_dim + kvh * hs,
                             hs, f16, k)
                    kv_store(cache.values, at + kvh * head_run, self.vb + t * kv_dim + kvh * hs,
                             hs, f16, k)
            # head-major: a head's rows run one after another while its keys and values
            # are in L2; contiguous ranges of heads per thread
            for th in prange(H * T, schedule="static", num_threads=nt):
                h = th // T
                t = th % T
                attention_head(xb + t * dim + h * hs, q + t * dim + h * hs,
                               kc + (l * ps * kv_dim + (h // kv_mul) * head_run) * item,
                               vc + (l * ps * kv_dim + (h // kv_mul) * head_run) * item,
                               tables + seq[t] * table_width, page_entries * item, ps,
                               att + th * maxp, positions[t] + 1, hs, f16, k)
            prepare(&xa, xb, xb, NULL, T, dim, gs, self.xq, self.xs, self.packed,
                    L.wo.q8_input, k, nt)
            matmul(self.xb2, dim, &xa, &L.wo, rb, nt)
            for i in range(T * dim):
                self.x[i] += self.xb2[i]

            # feed-forward: w2(silu(w1 x) * w3 x)
            prepare(&xa, xb, self.x, L.ffn_norm, T, dim, gs, self.xq, self.xs, self.packed,
                    L.w1.q8_input, k, nt)
            swiglu(self.hb, self.hb2, &L.w1, &L.w3, &xa, rb, nt)
            prepare(&xa, self.hb, self.hb, NULL, T, hidden, gs, self.xq, self.xs, self.packed,
                    L.w2.q8_input, k, nt)
            matmul(xb, dim, &xa, &L.w2, rb, nt)
            for i in range(T * dim):
                self.x[i] += xb[i]

        # classifier over the rows that want logits, gathered
        for i in range(n_logits):
            memcpy(self.xb2 + i * dim, self.x + logit_rows[i] * dim, dim * sizeof(float))
        prepare(&xa, xb, self.xb2, w.final_norm, n_logits, dim, gs, self.xq, self.xs,
                self.packed, w.classifier.q8_input, k, nt)
        matmul(logits, w.vocab_size, &xa, &w.classifier, rb, nt)


cdef class State:
    """The run state of one sequence over shared `Weights`: a Workspace and a KV cache
    of one page of `capacity` positions (prompt + steps, at most seq_len).

    `max_block` is how many tokens one forward call takes; `kv` the cache's element
    type, "f16" (half the memory; kernels.h's rounding) or "f32".
    """
    cdef readonly Workspace workspace
    cdef readonly KVCache cache
    cdef readonly Py_ssize_t capacity, max_block
    cdef int32_t[:, ::1] table
    cdef int32_t[::1] seq, positions, last, every

    def __init__(self, Weights weights, Py_ssize_t capacity, Py_ssize_t max_block=32,
                 int threads=1, str kv="f16"):
        if not 0 < capacity <= weights.seq_len:
            raise ValueError(f"capacity {capacity} outside 1..seq_len {weights.seq_len}")
        if max_block < 1:
            raise ValueError("max_block must be at least 1")
        if kv not in ("f16", "f32"):
            raise ValueError(f"kv cache type {kv!r}: must be 'f16' or 'f32'")
        self.capacity = capacity
        self.max_block = min(max_block, capacity)  # a longer block could never run
        self.workspace = Workspace(weights, self.max_block, capacity, threads)
        self.cache = KVCache(weights, capacity, 1, kv)
        self.table = np.zeros((1, 1), np.int32)
        self.seq = np.zeros(self.max_block, np.int32)
        self.positions = np.zeros(self.max_block, np.int32)
        self.every = np.arange(self.max_block, dtype=np.int32)
        self.last = np.zeros(1, np.int32)

    @property
    def weights(self):
        return self.workspace.weights

    @property
    def kv(self):
        return self.cache.kv

    @property
    def threads(self):
        return self.workspace.threads

    @threads.setter
    def threads(self, int n):
        self.workspace.threads = n

    @property
    def kv_cache_bytes(self):
        return self.cache.nbytes

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
        if logits.shape[0] not in (1, T):
            raise ValueError("logits buffer must be (T, vocab) or (1, vocab)")
        for t in range(T):
            self.positions[t] = pos + t
        self.last[0] = T - 1
        rows = self.every[:T] if logits.shape[0] == T and T > 1 else self.last
        self.workspace.forward(self.cache, tokens, self.positions[:T], self.seq[:T],
                               self.table, rows, logits)


# ----------------------------------------------------------------------------
# A variant's kernels one by one (and the ops every variant shares), for the
# checks against numpy references and for kernel benchmarks (tools/bench.py).

cdef class Kernels:
    cdef const qllama_kernels* k
    cdef readonly str variant

    def __init__(self, str variant):
        self.k = variant_table(variant)
        self.variant = variant

    def quantize(self, const float[::1] x, Py_ssize_t gs):
        """Activations x (length a multiple of gs) to (int8 values, one scale per group)."""
        if gs <= 0 or x.shape[0] == 0 or x.shape[0] % gs:
            raise ValueError("x must be a non-empty whole number of groups")
        q = np.empty(x.shape[0], np.int8)
        s = np.empty(x.shape[0] // gs, np.float32)
        cdef int8_t[::1] qv = q
        cdef float[::1] sv = s
        self.k.quantize_row(&x[0], x.shape[0], gs, &qv[0], &sv[0])
        return q, s

    def matmul(self, tensor, const float[:, ::1] x, int threads=1):
        """x (T, cols) @ tensor^T for an fp32 ndarray or a formats.llama2c.QTensor (any
        group size), through the kernel the engine would choose for it, with the
        activations quantized and packed as the engine does."""
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads {threads} outside 1..{MAX_THREADS}")
        cdef Matrix m = make_matrix(tensor, getattr(tensor, "group_size", 0), self.k)
        cdef Py_ssize_t T = x.shape[0], n = m.m.cols, gs = m.m.gs, t
        if x.shape[1] != n or T == 0:
            raise ValueError("x must be (T > 0, cols)")
        out = np.empty((T, m.m.rows), np.float32)
        cdef float[:, ::1] o = out
        cdef int8_t[::1] xq = np.zeros(T * n, np.int8)
        cdef float[::1] xs = np.zeros(T * (n // gs if gs else 0) + 1, np.float32)
        cdef size_t nbytes = 0
        if m.q8_input and self.k.q80_packed_bytes != NULL:
            nbytes = self.k.q80_packed_bytes(T, n, gs)
        cdef unsigned char[::1] packed = np.zeros(nbytes + 1, np.uint8)
        cdef qllama_acts xa
        xa.x, xa.x_stride, xa.q, xa.s, xa.T, xa.n, xa.gs = &x[0, 0], n, &xq[0], &xs[0], T, n, gs
        xa.packed = NULL
        if m.q8_input:
            for t in range(T):
                self.k.quantize_row(&x[t, 0], n, gs, &xq[t * n], &xs[t * (n // gs)])
            if T > 1 and nbytes and self.k.q80_pack != NULL:
                self.k.q80_pack(&xa, &packed[0])
                xa.packed = &packed[0]
        with nogil:
            matmul(&o[0, 0], m.m.rows, &xa, &m, self.k.row_block, threads)
        return out

    def dot(self, const float[::1] a, const float[::1] b):
        if a.shape[0] != b.shape[0] or a.shape[0] == 0:
            raise ValueError("a and b must have the same non-zero length")
        return self.k.f32_dot(&a[0], &b[0], a.shape[0])

    def to_f16(self, const float[::1] x):
        """x rounded to fp16 as the KV cache stores it: (uint16 bits, as float32)."""
        h = np.empty(x.shape[0], np.uint16)
        cdef uint16_t[::1] hv = h
        if x.shape[0]:
            self.k.f16_store(&x[0], &hv[0], x.shape[0])
        back = np.array([qllama_f16_to_f32(v) for v in h], np.float32)
        return h, back

    def attention(self, const float[::1] q, const float[:, ::1] key_cache,
                  const float[:, ::1] value_cache, Py_ssize_t head_size, Py_ssize_t kv_offset,
                  str kv="f32"):
        """One head over all rows of the caches (n_pos, kv_dim), whose head is at
        kv_offset; kv "f16" rounds the cache to fp16 first, as the engine stores it."""
        cdef Py_ssize_t n_pos = key_cache.shape[0], kv_dim = key_cache.shape[1]
        if (n_pos == 0 or value_cache.shape[0] != n_pos or value_cache.shape[1] != kv_dim
                or q.shape[0] != head_size or kv_offset < 0 or kv_offset + head_size > kv_dim
                or kv not in ("f16", "f32")):
            raise ValueError("inconsistent attention shapes")
        keys = np.ascontiguousarray(np.asarray(key_cache)[:, kv_offset:kv_offset + head_size])
        values = np.ascontiguousarray(np.asarray(value_cache)[:, kv_offset:kv_offset + head_size])
        if kv == "f16":
            keys = self.to_f16(keys.reshape(-1))[0]
            values = self.to_f16(values.reshape(-1))[0]
        cdef const unsigned char[::1] kb = keys.reshape(-1).view(np.uint8)
        cdef const unsigned char[::1] vb = values.reshape(-1).view(np.uint8)
        out = np.empty(head_size, np.float32)
        att = np.empty(n_pos, np.float32)
        cdef float[::1] o = out
        cdef float[::1] a = att
        cdef int32_t page = 0  # the cache as one page of n_pos positions
        attention_head(&o[0], &q[0], <const char*>&kb[0], <const char*>&vb[0], &page, 0, n_pos,
                       &a[0], n_pos, head_size, kv == "f16", self.k)
        return out

    @staticmethod
    def rmsnorm(const float[::1] x, const float[::1] weight):
        if x.shape[0] != weight.shape[0] or x.shape[0] == 0:
            raise ValueError("x and weight must have the same non-zero length")
        out = np.empty(x.shape[0], np.float32)
        cdef float[::1] o = out
        rmsnorm(&o[0], &x[0], &weight[0], x.shape[0])
        return out

    @staticmethod
    def softmax(float[::1] x):
        if x.shape[0] == 0:
            raise ValueError("empty vector")
        softmax(&x[0], x.shape[0])

    @staticmethod
    def rope(float[::1] vec, Py_ssize_t head_size, Py_ssize_t pos):
        if head_size <= 0 or head_size % 2 or vec.shape[0] % head_size or pos < 0:
            raise ValueError("vector length must be a multiple of an even head size")
        fcos = np.empty(head_size // 2, np.float32)
        fsin = np.empty(head_size // 2, np.float32)
        cdef float[::1] c = fcos
        cdef float[::1] s = fsin
        rope_table(&c[0], &s[0], head_size, pos)
        rope(&vec[0], vec.shape[0], head_size, &c[0], &s[0])
