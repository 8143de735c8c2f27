# A variant's kernels one by one (and the ops every variant shares), for the checks
# against numpy references and for kernel benchmarks (tools/bench.py). Included by
# engine.pyx.

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

    def matmul(self, tensor, const float[:, ::1] x, int threads=1, bint packed=True,
               int decode_rows=1):
        """x (T, cols) @ tensor^T for an fp32 ndarray, a formats.llama2c.QTensor (any
        group size) or a quant.types.BlockTensor, through the driver as the engine runs
        it: the kernel it plans, the activations quantized and packed as in a forward
        pass. packed=False prepares them with no buffer, as a C caller of qllama_prepare
        may: kernels then work out what rows share by themselves. decode_rows as
        Weights takes it."""
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads {threads} outside 1..{MAX_THREADS}")
        cdef Matrix m = make_matrix(tensor, getattr(tensor, "group_size", 0), self.k,
                                    decode_rows)
        cdef Py_ssize_t T = x.shape[0], n = m.m.cols, gs = m.m.gs
        if x.shape[1] != n or T == 0:
            raise ValueError("x must be (T > 0, cols)")
        out = np.empty((T, m.m.rows), np.float32)
        cdef float[:, ::1] o = out
        cdef int8_t[::1] xq = np.zeros(T * n, np.int8)
        cdef float[::1] xs = np.zeros(T * (n // gs if gs else 0) + 1, np.float32)
        cdef size_t nbytes = qllama_packed_bytes(self.k, T, n, gs) if packed else 0
        cdef unsigned char[::1] buf = np.zeros(nbytes + 1, np.uint8)
        cdef qllama_acts xa
        qllama_prepare(self.k, &m, &xa, &x[0, 0], T, &xq[0], &xs[0],
                       &buf[0] if nbytes else NULL)
        with nogil:
            matmul(&o[0, 0], m.m.rows, &xa, &m, self.k.row_block, threads)
        return out

    def dequantize_row(self, tensor, Py_ssize_t r):
        """Row r of a matrix (as matmul takes) in fp32, as the token table reads it."""
        cdef Matrix m = make_matrix(tensor, getattr(tensor, "group_size", 0), self.k)
        if not 0 <= r < m.m.rows:
            raise IndexError(f"row {r} outside 0..{m.m.rows - 1}")
        out = np.empty(m.m.cols, np.float32)
        cdef float[::1] o = out
        qllama_dequantize_row(&m.m, r, &o[0])
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
    def rmsnorm(const float[::1] x, const float[::1] weight, double eps=1e-5):
        if x.shape[0] != weight.shape[0] or x.shape[0] == 0:
            raise ValueError("x and weight must have the same non-zero length")
        out = np.empty(x.shape[0], np.float32)
        cdef float[::1] o = out
        rmsnorm(&o[0], &x[0], &weight[0], x.shape[0], eps)
        return out

    @staticmethod
    def softmax(float[::1] x):
        if x.shape[0] == 0:
            raise ValueError("empty vector")
        softmax(&x[0], x.shape[0])

    @staticmethod
    def rope(float[::1] vec, Py_ssize_t head_size, Py_ssize_t pos, float theta=10000.0):
        if head_size <= 0 or head_size % 2 or vec.shape[0] % head_size or pos < 0:
            raise ValueError("vector length must be a multiple of an even head size")
        fcos = np.empty(head_size // 2, np.float32)
        fsin = np.empty(head_size // 2, np.float32)
        cdef float[::1] c = fcos
        cdef float[::1] s = fsin
        rope_table(&c[0], &s[0], head_size, pos, theta)
        rope(&vec[0], vec.shape[0], head_size, &c[0], &s[0])

    @staticmethod
    def swiglu(const float[::1] h, const float[::1] g):
        """silu(h) * g as the feed-forward computes it (activations.h), as a new array."""
        if h.shape[0] != g.shape[0] or h.shape[0] == 0:
            raise ValueError("h and g must be non-empty and of the same length")
        out = np.array(h, np.float32)
        cdef float[::1] o = out
        qllama_swiglu(&o[0], &g[0], o.shape[0])
        return out

    @staticmethod
    def attention_softmax(float[::1] x):
        """In place, as attention computes it (activations.h)."""
        if x.shape[0] == 0:
            raise ValueError("empty vector")
        qllama_softmax(&x[0], x.shape[0])
