# Matrices and the choice of their kernel; the weights of one checkpoint. Included by
# engine.pyx.

ctypedef qllama_plan Matrix  # a matrix, its kernel on this CPU, its input (driver.h)


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
    # the matrix whose plan prepares the input wq/wk/wv share, and w1/w3's: one that
    # takes a Q8 copy if any does (the others read the fp32 rows beside it)
    const Matrix* attn_in
    const Matrix* ffn_in


cdef Matrix make_matrix(object tensor, Py_ssize_t gs, const qllama_kernels* k,
                        int decode_rows=1, uint8_t* row_notes=NULL) except *:
    """A Matrix over a mapped tensor (an fp32 ndarray, a formats.llama2c.QTensor or a
    formats.gguf_types.BlockTensor), checked against its buffers, with the kernel the driver
    plans for it; decode_rows, row_notes: kernels.h's qllama_matrix's (row_notes, for a
    Q8_0 matrix, zeroed and rows / 16 + 1 bytes long)."""
    cdef Matrix mat
    cdef qllama_matrix m
    cdef const float[::1] w
    cdef const int8_t[::1] q
    cdef const float[::1] s
    cdef const uint8_t[::1] b
    cdef int kid
    memset(&m, 0, sizeof(qllama_matrix))
    m.rows, m.cols = tensor.shape
    if isinstance(tensor, BlockTensor):
        qtype = TYPES.get(tensor.qtype.name)  # the file's layout → the kernel's type
        kid = qtype.kernel_id if qtype is not None else -1
        if not QLLAMA_Q80 < kid < QLLAMA_N_TYPES:
            raise ValueError(f"{tensor.qtype.name} has no kernel")
        b = tensor.data
        rows, cols = tensor.shape  # Python ints: no product wraps
        # the kernels' own block sizes (kernels.h), not only the registry's, bound the reads
        if (rows <= 0 or cols <= 0 or cols % qllama_block_values[kid]
                or b.shape[0] != rows * (cols // qllama_block_values[kid])
                * qllama_block_bytes[kid]):
            raise ValueError(f"{tensor.qtype.name} matrix does not match its shape")
        m.type = kid
        m.blocks = &b[0]
        m.gs = 32 if kid > QLLAMA_BF16 else 0  # quantized activations, groups of 32
    elif isinstance(tensor, np.ndarray):
        w = tensor.reshape(-1)
        if m.rows <= 0 or m.cols <= 0 or w.shape[0] != m.rows * m.cols:
            raise ValueError("fp32 matrix does not match its shape")
        m.w = &w[0]
    else:
        q = tensor.q
        s = tensor.s
        if (m.rows <= 0 or m.cols <= 0 or gs <= 0 or q.shape[0] != m.rows * m.cols
                or (m.rows * m.cols) % gs or s.shape[0] != m.rows * m.cols // gs):
            raise ValueError("Q8_0 matrix does not match its shape and group size")
        m.type = QLLAMA_Q80
        m.q = &q[0]
        m.s = &s[0]
        m.gs = gs
        m.row_notes = row_notes
    m.decode_rows = decode_rows
    qllama_plan_matrix(&mat, &m, k)
    return mat


cdef struct Net:  # what the forward pass reads of the weights, without the GIL
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
    int seq_len, head_size, kv_dim, group_size
    float rope_theta
    double norm_eps         # double: added as run.c adds its 1e-5 literal (ops.rmsnorm)
    const qllama_kernels* kernels
    Layer* layers
    Matrix tok_embeddings
    Matrix classifier       # the token table itself when the classifier is shared
    const float* final_norm


cdef class Weights:
    """One mapped checkpoint's tensors and each matrix's kernel, for `variant`."""
    cdef object model  # the ModelFile and its buffer: they keep the map (every pointer) alive
    cdef list notes    # each matrix's row_notes (kernels.h; Q8_0 kernels keep them)
    cdef Net net
    cdef readonly str variant
    cdef readonly int decode_rows

    def __cinit__(self):
        self.net.layers = NULL

    def __init__(self, model, str variant, int decode_rows=1):
        """`model` is a validated model file: a formats.llama2c.ModelFile (version 0, 1
        or 2) or a GGUF file; its `spec` and `tensor(name, layer)` by llama2.c's names.
        Every shape is checked against the spec again here, whoever validated it.
        decode_rows: how one token reads a Q8_0 matrix (qllama/kernels.py's
        decode_rows)."""
        c = model.spec
        cdef Net* n = &self.net
        self.model = (model, model.buffer)
        self.notes = []
        n.dim, n.hidden_dim, n.n_layers = c.dim, c.hidden_dim, c.n_layers
        n.n_heads, n.n_kv_heads, n.vocab_size = c.n_heads, c.n_kv_heads, c.vocab_size
        n.seq_len, n.head_size, n.kv_dim = c.seq_len, c.head_size, c.kv_dim
        n.rope_theta, n.norm_eps = c.rope_theta, c.norm_eps
        self.variant = variant
        self.decode_rows = decode_rows
        n.kernels = variant_table(variant)
        n.layers = <Layer*>calloc(c.n_layers, sizeof(Layer))
        if n.layers == NULL:
            raise MemoryError()
        cdef int l
        cdef Layer* L
        for l in range(c.n_layers):
            n.layers[l].attn_norm = self._norm(model, "attention_norm", l)
            n.layers[l].ffn_norm = self._norm(model, "ffn_norm", l)
            n.layers[l].wq = self._matrix(model, "wq", l, n.n_heads * n.head_size, n.dim)
            n.layers[l].wk = self._matrix(model, "wk", l, n.kv_dim, n.dim)
            n.layers[l].wv = self._matrix(model, "wv", l, n.kv_dim, n.dim)
            n.layers[l].wo = self._matrix(model, "wo", l, n.dim, n.n_heads * n.head_size)
            n.layers[l].w1 = self._matrix(model, "w1", l, n.hidden_dim, n.dim)
            n.layers[l].w2 = self._matrix(model, "w2", l, n.dim, n.hidden_dim)
            n.layers[l].w3 = self._matrix(model, "w3", l, n.hidden_dim, n.dim)
            L = &n.layers[l]
            L.attn_in = &L.wk if L.wk.q8_input else &L.wv if L.wv.q8_input else &L.wq
            L.ffn_in = &L.w3 if L.w3.q8_input and not L.w1.q8_input else &L.w1
        n.final_norm = self._norm(model, "norm", None)
        n.tok_embeddings = self._matrix(model, "tok_embeddings", None, n.vocab_size, n.dim)
        if c.shared_classifier:
            n.classifier = n.tok_embeddings
        else:
            n.classifier = self._matrix(model, "output", None, n.vocab_size, n.dim)

    cdef const float* _norm(self, model, str name, layer) except NULL:
        cdef const float[::1] norm = model.tensor(name, layer)
        if norm.shape[0] != self.net.dim:
            raise ValueError(f"{name} has {norm.shape[0]} values, dim is {self.net.dim}")
        return &norm[0]

    cdef Matrix _matrix(self, model, str name, layer, Py_ssize_t rows,
                        Py_ssize_t cols) except *:
        """Matrix `name` of `layer`, (rows, cols); the activations' group size of every
        matrix that takes quantized rows is one (the workspace's scratch has one)."""
        tensor = model.tensor(name, layer)
        if tuple(tensor.shape) != (rows, cols):
            raise ValueError(f"{name} is {tuple(tensor.shape)}, the spec needs {(rows, cols)}")
        notes = np.zeros(rows // 16 + 1, np.uint8)
        cdef uint8_t[::1] nv = notes
        self.notes.append(notes)
        cdef Matrix m = make_matrix(tensor, getattr(tensor, "group_size", 0), self.net.kernels,
                                    self.decode_rows, &nv[0])
        if m.q8_input:
            if self.net.group_size and self.net.group_size != m.m.gs:
                raise ValueError(f"{name}: activation groups of {m.m.gs}, other matrices "
                                 f"take {self.net.group_size}")
            self.net.group_size = m.m.gs
        return m

    @property
    def seq_len(self):
        return self.net.seq_len

    @property
    def vocab_size(self):
        return self.net.vocab_size

    def __dealloc__(self):
        free(self.net.layers)
