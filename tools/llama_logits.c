/* Teacher-forced logits from llama.cpp, for tools/interop.py: the same token ids in,
 * every position's logits out, through llama.cpp's public API (llama.h) only.
 *
 *   llama_logits MODEL.gguf TOKENS OUT THREADS
 *
 * TOKENS: int32 ids (BOS first if wanted); OUT: float32 (n, vocab), row t predicting
 * the token after ids[0..t]. Built by tools/interop.py against a llama.cpp build. */
#include <stdio.h>
#include <stdlib.h>

#include "llama.h"

static void *slurp(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(*n ? *n : 1);
    if (p && fread(p, 1, *n, f) != (size_t)*n) p = NULL;
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: llama_logits MODEL.gguf TOKENS OUT THREADS\n");
        return 2;
    }
    long bytes;
    int32_t *ids = slurp(argv[2], &bytes);
    int n = (int)(bytes / 4);
    if (!ids || n == 0) {
        fprintf(stderr, "llama_logits: cannot read tokens from %s\n", argv[2]);
        return 1;
    }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = (uint32_t)n;
    cp.n_threads = cp.n_threads_batch = atoi(argv[4]);
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int t = 0; t < n; t++) {
        batch.token[t] = ids[t];
        batch.pos[t] = t;
        batch.n_seq_id[t] = 1;
        batch.seq_id[t][0] = 0;
        batch.logits[t] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch)) {
        fprintf(stderr, "llama_logits: llama_decode failed\n");
        return 1;
    }
    FILE *out = fopen(argv[3], "wb");
    if (!out) return 1;
    for (int t = 0; t < n; t++)
        if (fwrite(llama_get_logits_ith(ctx, t), sizeof(float), vocab, out) != (size_t)vocab)
            return 1;
    fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
