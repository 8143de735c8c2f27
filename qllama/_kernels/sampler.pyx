# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Token sampling exactly as llama2.c's run.c does it: xorshift64* generator,
float32 softmax with temperature, top-p over candidates above (1-p)/(n-1),
sorted by probability with qsort. Same seed, same logits -> same tokens."""
from libc.stdlib cimport malloc, free, qsort
from libc.stdint cimport uint32_t
from qllama._kernels.bits cimport abs_bits
from qllama._kernels.ops cimport softmax


cdef struct ProbIndex:
    float prob
    int index


cdef int compare(const void* a, const void* b) noexcept nogil:
    cdef const ProbIndex* a_ = <const ProbIndex*>a
    cdef const ProbIndex* b_ = <const ProbIndex*>b
    if a_.prob > b_.prob:
        return -1
    if a_.prob < b_.prob:
        return 1
    return 0


cdef inline unsigned int random_u32(unsigned long long* state) noexcept nogil:
    state[0] ^= state[0] >> 12
    state[0] ^= state[0] << 25
    state[0] ^= state[0] >> 27
    return <unsigned int>((state[0] * 0x2545F4914F6CDD1DULL) >> 32)


cdef inline float random_f32(unsigned long long* state) noexcept nogil:
    return (random_u32(state) >> 8) / 16777216.0


cdef bint all_finite(const float* x, int n) noexcept nogil:
    """No NaN or +-Inf: an integer test of the bit patterns, which vectorizes."""
    cdef unsigned int bad = 0
    cdef int i
    for i in range(n):
        bad |= abs_bits(x[i]) >= 0x7F800000u  # Inf's bits and above (NaN)
    return bad == 0


cdef int argmax(const float* p, int n) noexcept nogil:
    cdef int i, best = 0
    for i in range(1, n):
        if p[i] > p[best]:
            best = i
    return best


cdef int sample_mult(const float* p, int n, float coin) noexcept nogil:
    cdef float cdf = 0.0
    cdef int i
    for i in range(n):
        cdf += p[i]
        if coin < cdf:
            return i
    return n - 1


cdef int sample_topp(const float* p, int n, float topp, ProbIndex* cand,
                     float coin) noexcept nogil:
    # Tokens below the cutoff cannot be in the nucleus: skip them before sorting.
    cdef float cutoff = (1.0 - topp) / (n - 1)
    cdef int i, n0 = 0, last
    cdef float cumulative = 0.0, r, cdf = 0.0
    for i in range(n):
        if p[i] >= cutoff:
            cand[n0].index = i
            cand[n0].prob = p[i]
            n0 += 1
    if n0 == 0:  # tiny vocabulary and tiny top-p: nothing reaches the cutoff
        return argmax(p, n)
    qsort(cand, n0, sizeof(ProbIndex), compare)
    last = n0 - 1
    for i in range(n0):
        cumulative += cand[i].prob
        if cumulative > topp:
            last = i
            break
    r = coin * cumulative
    for i in range(last + 1):
        cdf += cand[i].prob
        if r < cdf:
            return cand[i].index
    return cand[last].index


cdef class Sampler:
    """temperature 0 = greedy; top_p outside (0, 1) = plain multinomial sampling."""
    cdef readonly int vocab_size
    cdef readonly float temperature, top_p
    cdef public unsigned long long state
    cdef ProbIndex* cand

    def __cinit__(self, int vocab_size, float temperature, float top_p,
                  unsigned long long seed):
        if vocab_size < 2:
            raise ValueError("vocab_size must be at least 2")
        self.vocab_size = vocab_size
        self.temperature = temperature
        self.top_p = top_p
        self.state = seed
        self.cand = <ProbIndex*>malloc(vocab_size * sizeof(ProbIndex))
        if self.cand == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.cand)

    def sample(self, float[::1] logits) -> int:
        """The next token from logits (vocab,); overwrites them with probabilities.

        Returns -1 when a logit is NaN or infinite (the model's weights are).
        A temperature so small that logits / T overflow is the greedy limit: the
        argmax, with the generator advanced as for any sampled token."""
        if logits.shape[0] != self.vocab_size:
            raise ValueError(f"logits have {logits.shape[0]} entries, vocab is {self.vocab_size}")
        cdef int n = self.vocab_size, i, nxt, best
        cdef float coin
        with nogil:
            if not all_finite(&logits[0], n):
                nxt = -1
            elif self.temperature == 0.0:
                nxt = argmax(&logits[0], n)
            else:
                best = argmax(&logits[0], n)
                for i in range(n):
                    logits[i] /= self.temperature
                coin = random_f32(&self.state)
                if not all_finite(&logits[0], n):
                    nxt = best
                else:
                    softmax(&logits[0], n)
                    if self.top_p <= 0 or self.top_p >= 1:
                        nxt = sample_mult(&logits[0], n, coin)
                    else:
                        nxt = sample_topp(&logits[0], n, self.top_p, self.cand, coin)
        return nxt
