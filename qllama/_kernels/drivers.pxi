# The kernel driver (driver.h) on OpenMP threads: a matmul's rows dealt out in blocks of
# the variant's row_block; the input of a matmul; a token's embedding. Included by
# engine.pyx.

cdef struct Job:  # one matmul of a fused parallel region: out (T, m.rows)
    const Matrix* m
    float* out
    Py_ssize_t out_stride


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
        qllama_run_rows(jobs[j].m, rb * bb, rb, x, jobs[j].out, jobs[j].out_stride)


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
    """hb (T, hidden) = silu(x @ w1^T) * (x @ w3^T), in one parallel region.
    One token: w1 and w3 as two jobs of matmuls, so a thread streams one matrix at a
    time (a block of each in turn ran 10% below one stream when memory was fast,
    docs/performance.md), then the gate, a few microseconds, on this thread.
    A block of tokens: a thread computes a block of rows of both matrices and gates
    them itself (activations.h), so the gate's work is shared out too."""
    cdef Py_ssize_t b, t, hidden = w1.m.rows
    cdef Job jobs[2]
    if x.T == 1:
        jobs[0].m, jobs[0].out, jobs[0].out_stride = w1, hb, hidden
        jobs[1].m, jobs[1].out, jobs[1].out_stride = w3, hb2, hidden
        matmuls(jobs, 2, x, rb, threads)
        qllama_swiglu(hb, hb2, hidden)
        return
    for b in prange((hidden + rb - 1) // rb, schedule="guided", num_threads=threads):
        qllama_run_rows(w1, rb * b, rb, x, hb, hidden)
        qllama_run_rows(w3, rb * b, rb, x, hb2, hidden)
        for t in range(x.T):
            qllama_swiglu(hb + t * hidden + rb * b, hb2 + t * hidden + rb * b,
                          min(rb, hidden - rb * b))


cdef void prepare(qllama_acts* x, const Matrix* m, float* out, const float* inp,
                  const float* weight, double eps, Py_ssize_t T, int8_t* xq, float* xs,
                  void* packed, const qllama_kernels* k, int threads) noexcept nogil:
    """The input of matmuls by m (and by matrices of its shape and kind): rows t < T of
    out = rmsnorm(inp) (or inp itself when weight is NULL and out is inp), prepared
    for m by the driver: their Q8_0 copy in xq/xs when m takes one, and for a block
    of tokens the variant's packed layout of it (once here, not once per row block).
    A block's rows go in parallel."""
    cdef Py_ssize_t t, n = m.m.cols
    qllama_acts_init(x, m, out, T, xq, xs)
    if T == 1:
        if weight != NULL:
            rmsnorm(out, inp, weight, n, eps)
        qllama_acts_quantize(k, x, 0, 1)
    else:
        for t in prange(T, schedule="static", num_threads=threads):
            if weight != NULL:
                rmsnorm(out + t * n, inp + t * n, weight, n, eps)
            qllama_acts_quantize(k, x, t, t + 1)
    qllama_acts_pack(k, x, packed)


cdef void observe(double* sums, Py_ssize_t at, const float* rows, Py_ssize_t T,
                  Py_ssize_t n) noexcept nogil:
    """sums[at + j] += rows[t, j]^2 over rows t < T (n columns), in float64; nothing
    when sums is NULL (Workspace.stats is off). The matmuls dwarf it: T * n adds
    against T * n * rows multiply-adds."""
    cdef Py_ssize_t t, j
    cdef double v
    if sums == NULL:
        return
    for t in range(T):
        for j in range(n):
            v = rows[t * n + j]
            sums[at + j] += v * v


cdef void embed_row(float* out, const Matrix* table, Py_ssize_t token) noexcept nogil:
    qllama_dequantize_row(&table.m, token, out)
