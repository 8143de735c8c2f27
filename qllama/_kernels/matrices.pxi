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


cdef Matrix make_matrix(object tensor, Py_ssize_t gs, const qllama_kernels* k) except *:
    """A Matrix over a mapped tensor (an fp32 ndarray, a formats.llama2c.QTensor or a
    quant.types.BlockTensor), checked against its buffers, with the kernel the driver
    plans for it."""
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
        kid = tensor.qtype.kernel_id
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
    qllama_plan_matrix(&mat, &m, k)
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
