# Forward passes: the scratch of a block of rows (Workspace) and one sequence (State).
# Included by engine.pyx.

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
    cdef double* sums        # the `stats` buffer's memory, NULL when off
    cdef object sums_array   # the `stats` buffer, kept alive while set

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
        # the rows every matmul takes are dim or hidden_dim long
        packed = max(qllama_packed_bytes(k, B, w.dim, w.group_size),
                     qllama_packed_bytes(k, B, w.hidden_dim, w.group_size))
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

    @property
    def stats_size(self):
        """n_layers * (3 dim + hidden_dim) + dim + 2: the `stats` buffer's length."""
        return self.net.n_layers * (3 * self.net.dim + self.net.hidden_dim) + self.net.dim + 2

    @property
    def stats(self):
        """A float64 buffer of stats_size entries (or None: off) that every forward
        adds to, for an importance matrix (llama.cpp's imatrix): for each layer, the
        sums of squares of the input columns of wq/wk/wv (dim), wo (dim), w1/w3 (dim)
        and w2 (hidden_dim); then the classifier's (dim); then the count of rows the
        layers saw and the count the classifier saw (the logits rows)."""
        return self.sums_array

    @stats.setter
    def stats(self, buffer):
        cdef double[::1] view
        if buffer is None:
            self.sums, self.sums_array = NULL, None
            return
        view = buffer
        if view.shape[0] != self.stats_size:
            raise ValueError(f"stats buffer of {view.shape[0]} entries; needs {self.stats_size}")
        self.sums, self.sums_array = &view[0], buffer

    def forward(self, KVCache cache, const int32_t[::1] tokens, const int32_t[::1] positions,
                const int32_t[::1] seq, const int32_t[:, ::1] tables,
                const int32_t[::1] logit_rows, float[:, ::1] logits):
        """Run rows t < T: token tokens[t] of sequence seq[t] at position positions[t],
        whose pages are tables[seq[t]] in `cache`; each row's key and value go to the
        cache, and it attends to its sequence's positions 0..positions[t] (earlier rows
        of the block included). logits[i] gets the prediction of row logit_rows[i]; with
        no logit_rows (logits (0, vocab)), the classifier is not run: a prompt's blocks
        before its last only fill the cache.

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
        if logits.shape[0] != L or logits.shape[1] != vocab:
            raise ValueError("logits must be (len(logit_rows), vocab)")
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
                          tables.shape[1], T, &logit_rows[0] if L else NULL, L,
                          &logits[0, 0] if L else NULL)

    cdef void _forward(self, KVCache cache, const int32_t* tokens, const int32_t* positions,
                       const int32_t* seq, const int32_t* tables, Py_ssize_t table_width,
                       Py_ssize_t T, const int32_t* logit_rows, Py_ssize_t n_logits,
                       float* logits) noexcept nogil:
        cdef const Net* w = self.net
        cdef const qllama_kernels* k = w.kernels
        cdef Py_ssize_t dim = w.dim, kv_dim = w.kv_dim
        cdef Py_ssize_t hs = w.head_size, H = w.n_heads, rb = k.row_block
        cdef double eps = w.norm_eps
        cdef Py_ssize_t kv_mul = w.n_heads // w.n_kv_heads, kvh
        cdef Py_ssize_t ps = cache.page_size, maxp = self.max_positions
        cdef Py_ssize_t page_entries = cache.page_entries, head_run = ps * hs
        cdef Py_ssize_t t, l, i, th, h, at, pos
        cdef Py_ssize_t per = 3 * dim + w.hidden_dim  # a layer's entries in `stats`
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
            rope_table(self.fcos + t * (hs // 2), self.fsin + t * (hs // 2), hs, positions[t],
                       w.rope_theta)

        for l in range(w.n_layers):
            L = &w.layers[l]

            # attention: q, k, v; k and v (k rotated) then go to the rows' pages
            prepare(&xa, L.attn_in, xb, self.x, L.attn_norm, eps, T, self.xq, self.xs,
                    self.packed, k, nt)
            jobs[0].m, jobs[0].out, jobs[0].out_stride = &L.wq, self.q, dim
            jobs[1].m, jobs[1].out, jobs[1].out_stride = &L.wk, self.kb, kv_dim
            jobs[2].m, jobs[2].out, jobs[2].out_stride = &L.wv, self.vb, kv_dim
            matmuls(jobs, 3, &xa, rb, nt)
            observe(self.sums, l * per, xb, T, dim)
            # a block's rows in parallel; one row stays on this thread (no team to wake)
            for t in prange(T, schedule="static", num_threads=nt if T > 1 else 1):
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
            prepare(&xa, &L.wo, xb, xb, NULL, 0, T, self.xq, self.xs, self.packed, k, nt)
            matmul(self.xb2, dim, &xa, &L.wo, rb, nt)
            observe(self.sums, l * per + dim, xb, T, dim)
            for i in range(T * dim):
                self.x[i] += self.xb2[i]

            # feed-forward: w2(silu(w1 x) * w3 x)
            prepare(&xa, L.ffn_in, xb, self.x, L.ffn_norm, eps, T, self.xq, self.xs, self.packed, k,
                    nt)
            swiglu(self.hb, self.hb2, &L.w1, &L.w3, &xa, rb, nt)
            observe(self.sums, l * per + 2 * dim, xb, T, dim)
            prepare(&xa, &L.w2, self.hb, self.hb, NULL, 0, T, self.xq, self.xs, self.packed, k,
                    nt)
            observe(self.sums, l * per + 3 * dim, self.hb, T, w.hidden_dim)
            matmul(xb, dim, &xa, &L.w2, rb, nt)
            for i in range(T * dim):
                self.x[i] += xb[i]

        # classifier over the rows that want logits, gathered
        if n_logits > 0:
            for i in range(n_logits):
                memcpy(self.xb2 + i * dim, self.x + logit_rows[i] * dim, dim * sizeof(float))
            prepare(&xa, &w.classifier, xb, self.xb2, w.final_norm, eps, n_logits, self.xq,
                    self.xs, self.packed, k, nt)
            matmul(logits, w.vocab_size, &xa, &w.classifier, rb, nt)
            observe(self.sums, w.n_layers * per, xb, n_logits, dim)
        if self.sums != NULL:
            self.sums[w.n_layers * per + dim] += T
            self.sums[w.n_layers * per + dim + 1] += n_logits


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
    def threads(self):
        return self.workspace.threads

    @threads.setter
    def threads(self, int n):
        self.workspace.threads = n

    def forward(self, const int32_t[::1] tokens, Py_ssize_t pos, float[:, ::1] logits):
        """Run tokens (T <= max_block) at positions pos..pos+T-1, filling the cache.

        logits is (T, vocab) for every position's prediction, (1, vocab) for the
        last one only, or (0, vocab) for none (the cache filled, no classifier).
        """
        cdef Py_ssize_t T = tokens.shape[0], t
        if not 0 < T <= self.max_block:
            raise ValueError(f"block of {T} tokens; must be 1..{self.max_block}")
        if pos < 0 or pos + T > self.capacity:
            raise ValueError(f"positions {pos}..{pos + T - 1} exceed the cache "
                             f"of {self.capacity}")
        if logits.shape[0] not in (0, 1, T):
            raise ValueError("logits buffer must be (T, vocab), (1, vocab) or (0, vocab)")
        for t in range(T):
            self.positions[t] = pos + t
        self.last[0] = T - 1
        rows = (self.every[:0] if logits.shape[0] == 0 else
                self.every[:T] if logits.shape[0] == T and T > 1 else self.last)
        self.workspace.forward(self.cache, tokens, self.positions[:T], self.seq[:T],
                               self.table, rows, logits)
