"""A pure-Python twin of the Cython BPE encoder (`qllama._kernels.bpe.MergeTable`):
the same algorithm, SentencePiece's bpe::Model::Encode over a dict of pieces, that
the kernel's ids are checked against. `BinTokenizer(path, data, merge_table=ReferenceTable)`
encodes with it."""
import heapq

from qllama.tokenizer.base import _char_len


class ReferenceTable:
    """Pure-Python twin of `qllama._kernels.bpe.MergeTable` (same algorithm,
    same ids): SentencePiece's bpe::Model::Encode over a dict of pieces."""

    def __init__(self, pieces, scores, mergeable, byte_ids, unk_id, byte_fallback):
        self.table = {}
        for i, p in enumerate(pieces):
            if mergeable[i] and p and p not in self.table:
                self.table[p] = (i, float(scores[i]))
        self.byte_ids, self.unk_id, self.byte_fallback = byte_ids, unk_id, byte_fallback

    def encode(self, text: bytes) -> list[int]:
        return bpe_reference(text, self.table, self.byte_ids, self.unk_id, self.byte_fallback)


def bpe_reference(text: bytes, table: dict, byte_ids, unk_id: int, byte_fallback: bool) -> list[int]:
    starts, sizes = [], []
    i = 0
    while i < len(text):                      # one symbol per UTF-8 character
        length = min(_char_len(text[i]), len(text) - i)
        starts.append(i)
        sizes.append(length)
        i += length
    m = len(starts)
    if m == 0:
        return []
    prev = list(range(-1, m - 1))
    nxt = list(range(1, m + 1))
    nxt[-1] = -1
    heap = []

    def push(left, right):
        if left < 0 or right < 0:
            return
        size = sizes[left] + sizes[right]
        hit = table.get(text[starts[left]:starts[left] + size])
        if hit is not None:                   # max score first, then leftmost
            heapq.heappush(heap, (-hit[1], left, right, size))

    for k in range(1, m):
        push(k - 1, k)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if sizes[left] == 0 or sizes[right] == 0 or sizes[left] + sizes[right] != size:
            continue
        sizes[left] = size
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        sizes[right] = 0
        push(prev[left], left)
        push(left, nxt[left])
    ids, k, prev_unk = [], 0, False
    while k >= 0:
        sym = text[starts[k]:starts[k] + sizes[k]]
        hit = table.get(sym)
        if hit is not None:
            ids.append(hit[0])
            prev_unk = False
        elif byte_fallback:
            ids.extend(byte_ids[b] for b in sym)
        else:
            if not prev_unk:
                ids.append(unk_id)
            prev_unk = True
        k = nxt[k]
    return ids
