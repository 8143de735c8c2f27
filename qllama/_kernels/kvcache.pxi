# The KV cache in pages and attention over it. Included by engine.pyx.

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
    qllama_softmax(att, n_pos)
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
        self.page_size, self.n_pages = page_size, n_pages
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
    def page_bytes(self):
        return 2 * self.page_entries * self.item

    def copy_page(self, Py_ssize_t src, Py_ssize_t dst):
        """Page src's keys and values into page dst: a sequence that starts from
        another's prompt takes its own copy of the page the prompt ends in."""
        if not (0 <= src < self.n_pages and 0 <= dst < self.n_pages):
            raise IndexError(f"page {src} or {dst} outside 0..{self.n_pages - 1}")
        cdef size_t n = self.page_entries * self.item
        memcpy(<char*>self.keys + dst * n, <char*>self.keys + src * n, n)
        memcpy(<char*>self.values + dst * n, <char*>self.values + src * n, n)
