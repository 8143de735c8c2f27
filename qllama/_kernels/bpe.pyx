# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""BPE encoding of normalized UTF-8 text, step for step as SentencePiece's
bpe::Model::Encode does it.

text (normalized bytes, n) → characters (UTF-8 lead-byte lengths) → pairs of
neighbours whose concatenation is a vocabulary piece, kept in a max-heap by
(score, leftmost first) → repeated merges of the best pair → one id per final
symbol; a symbol that is not a piece becomes its bytes' <0xNN> ids (byte
fallback) or one unknown id per run of unknown symbols.

`MergeTable` is the Python-facing type: it validates and lays out the
vocabulary once; `encode` prepares the buffers and runs the `nogil` core,
which only computes. The pure-Python twin `tests/bpe_reference.py` runs the
same algorithm and is what the tests compare this kernel against.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

import numpy as np


cdef struct Pair:
    float score     # score of the merged piece; larger merges first
    int32_t left    # index of the left symbol
    int32_t right   # index of the right symbol
    int32_t size    # byte length of the merged piece when it was pushed
    int32_t id      # id of the merged piece


cdef inline bint pops_before(const Pair* a, const Pair* b) noexcept nogil:
    # SentencePiece's agenda order: higher score first, then the leftmost pair.
    return a.score > b.score or (a.score == b.score and a.left < b.left)


cdef inline void heap_push(Pair* heap, Py_ssize_t* n, Pair p) noexcept nogil:
    cdef Py_ssize_t i = n[0], parent
    n[0] += 1
    while i > 0:
        parent = (i - 1) >> 1
        if not pops_before(&p, &heap[parent]):
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = p


cdef inline Pair heap_pop(Pair* heap, Py_ssize_t* n) noexcept nogil:
    cdef Pair top = heap[0]
    cdef Pair last
    cdef Py_ssize_t i = 0, child, m
    n[0] -= 1
    m = n[0]
    if m > 0:
        last = heap[m]
        while True:
            child = 2 * i + 1
            if child >= m:
                break
            if child + 1 < m and pops_before(&heap[child + 1], &heap[child]):
                child += 1
            if not pops_before(&heap[child], &last):
                break
            heap[i] = heap[child]
            i = child
        heap[i] = last
    return top


cdef inline int char_len(uint8_t lead) noexcept nogil:
    # UTF-8 sequence length from the lead byte (SentencePiece's OneCharLen).
    if lead < 0xC0:
        return 1
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    return 4


cdef inline uint64_t fnv1a(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ s[i]) * 1099511628211ULL
    return h


cdef class MergeTable:
    """The mergeable pieces (SentencePiece's normal pieces) of one vocabulary,
    in an open-addressing hash table keyed by their UTF-8 bytes."""

    cdef bytes blob                 # all mergeable pieces, concatenated
    cdef const uint8_t* data        # blob's bytes
    cdef int64_t[::1] offsets       # (vocab,) start of each piece in blob, -1 if not mergeable
    cdef int32_t[::1] lengths       # (vocab,) byte length of each piece
    cdef float[::1] scores          # (vocab,) merge score
    cdef int32_t[::1] slots         # (2^k,) piece id or -1
    cdef uint64_t mask
    cdef int32_t[::1] byte_ids      # (256,) id of <0xNN>, or -1
    cdef int32_t unk_id
    cdef bint byte_fallback

    def __init__(self, pieces, scores, mergeable, byte_ids, int unk_id, bint byte_fallback):
        """pieces: list of bytes (normalized form, "▁" for space); scores:
        float32 per piece; mergeable: bool per piece; byte_ids: 256 ids or -1."""
        cdef Py_ssize_t n = len(pieces), i, cap = 16
        if len(scores) != n or len(mergeable) != n or len(byte_ids) != 256:
            raise ValueError("pieces, scores and mergeable must have one entry per id")
        if byte_fallback and min(byte_ids) < 0:
            raise ValueError("byte fallback needs all 256 <0xNN> pieces")
        self.scores = np.ascontiguousarray(scores, dtype=np.float32)
        self.byte_ids = np.ascontiguousarray(byte_ids, dtype=np.int32)
        self.unk_id = unk_id
        self.byte_fallback = byte_fallback
        offsets = np.full(n, -1, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int32)
        chunks = []
        pos = 0
        for i in range(n):
            if mergeable[i] and len(pieces[i]) > 0:
                offsets[i] = pos
                lengths[i] = len(pieces[i])
                chunks.append(pieces[i])
                pos += len(pieces[i])
        self.blob = b"".join(chunks)
        self.data = self.blob
        self.offsets = offsets
        self.lengths = lengths
        while cap < 2 * n:
            cap *= 2
        self.slots = np.full(cap, -1, dtype=np.int32)
        self.mask = cap - 1
        for i in range(n):
            if self.offsets[i] >= 0 and self._find(self.data + self.offsets[i], self.lengths[i]) < 0:
                self._insert(<int32_t>i)   # on a duplicate piece the lowest id wins

    cdef void _insert(self, int32_t piece_id) noexcept nogil:
        cdef uint64_t h = fnv1a(self.data + self.offsets[piece_id], self.lengths[piece_id]) & self.mask
        while self.slots[h] >= 0:
            h = (h + 1) & self.mask
        self.slots[h] = piece_id

    cdef inline int32_t _find(self, const uint8_t* s, Py_ssize_t n) noexcept nogil:
        cdef uint64_t h = fnv1a(s, n) & self.mask
        cdef int32_t k
        while True:
            k = self.slots[h]
            if k < 0:
                return -1
            if self.lengths[k] == n and memcmp(self.data + self.offsets[k], s, n) == 0:
                return k
            h = (h + 1) & self.mask

    cdef inline void _maybe_push(self, const uint8_t* text, const int32_t* start,
                                 const int32_t* size, int32_t left, int32_t right,
                                 Pair* heap, Py_ssize_t* nheap) noexcept nogil:
        cdef int32_t k
        cdef Pair p
        if left < 0 or right < 0:
            return
        k = self._find(text + start[left], size[left] + size[right])
        if k < 0:
            return
        p.score = self.scores[k]
        p.left = left
        p.right = right
        p.size = size[left] + size[right]
        p.id = k
        heap_push(heap, nheap, p)

    cdef Py_ssize_t _encode(self, const uint8_t* text, Py_ssize_t n,
                            int32_t* start, int32_t* size, int32_t* prev, int32_t* next,
                            int32_t* sym_id, Pair* heap, int32_t* out) noexcept nogil:
        # start, size, prev, next, sym_id: (n,) one symbol per character, sym_id the
        # piece id once merged (-2: not looked up yet); heap: (3n,); out: (n,)
        cdef Py_ssize_t m = 0, i = 0, nheap = 0, nout = 0, j
        cdef int32_t k, left, right, piece_id
        cdef int length
        cdef Pair top
        cdef bint prev_unk = False
        while i < n:                                   # characters
            length = char_len(text[i])
            if i + length > n:
                length = <int>(n - i)
            start[m] = <int32_t>i
            size[m] = length
            prev[m] = <int32_t>(m - 1)
            next[m] = <int32_t>(m + 1)
            sym_id[m] = -2
            m += 1
            i += length
        if m == 0:
            return 0
        next[m - 1] = -1
        for j in range(1, m):                          # all neighbour pairs
            self._maybe_push(text, start, size, <int32_t>(j - 1), <int32_t>j, heap, &nheap)
        while nheap > 0:                               # best merge first
            top = heap_pop(heap, &nheap)
            left = top.left
            right = top.right
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != top.size:
                continue                               # stale: a side merged since
            size[left] += size[right]
            sym_id[left] = top.id
            next[left] = next[right]
            if next[right] >= 0:
                prev[next[right]] = left
            size[right] = 0
            self._maybe_push(text, start, size, prev[left], left, heap, &nheap)
            self._maybe_push(text, start, size, left, next[left], heap, &nheap)
        k = 0
        while k >= 0:                                  # ids
            piece_id = sym_id[k]
            if piece_id == -2:
                piece_id = self._find(text + start[k], size[k])
            if piece_id >= 0:
                out[nout] = piece_id
                nout += 1
                prev_unk = False
            elif self.byte_fallback:
                for j in range(start[k], start[k] + size[k]):
                    out[nout] = self.byte_ids[text[j]]
                    nout += 1
            else:
                if not prev_unk:                       # a run of unknowns is one id
                    out[nout] = self.unk_id
                    nout += 1
                prev_unk = True
            k = next[k]
        return nout

    def encode(self, bytes text):
        """Ids of normalized UTF-8 `text` (dummy prefix and "▁" already applied)."""
        cdef Py_ssize_t n = len(text), nout, j
        cdef const uint8_t* s = text
        cdef int32_t* ints
        cdef Pair* heap
        if n == 0:
            return []
        ints = <int32_t*>malloc(6 * n * sizeof(int32_t))
        heap = <Pair*>malloc(3 * n * sizeof(Pair))
        if ints == NULL or heap == NULL:
            free(ints)
            free(heap)
            raise MemoryError()
        try:
            with nogil:
                nout = self._encode(s, n, ints, ints + n, ints + 2 * n, ints + 3 * n,
                                    ints + 4 * n, heap, ints + 5 * n)
            ids = []
            for j in range(nout):
                ids.append(ints[5 * n + j])
            return ids
        finally:
            free(ints)
            free(heap)
