/*
export_logits.c: runs the C forward pass of a checkpoint on a batch of tokens and
writes the logits, so dev/check_export.py can compare them with the Hugging Face
model that dev/export_hf.py made from the same checkpoint.

    gcc -O2 -fopenmp -o dev/export_logits dev/export_logits.c -lm
    ./dev/export_logits CKPT_DIR TOKENS.bin LOGITS.bin

CKPT_DIR holds checkpoint.bin, or is that file (format: the comment above CHECKPOINT_MAGIC in
train_llama_subtrack.c); its parameters are read, and the whole file is checked (CRC). TOKENS.bin is
int32 B, int32 T, then int32 tokens (B, T), little-endian. LOGITS.bin gets
float32 logits (B, T, V), nothing else.

it includes the trainer with TESTING defined, so it runs the very forward pass
that trains.
*/
#define TESTING
#include "../train_llama_subtrack.c"
#include <sys/stat.h>

// reads the parameters of DIR/checkpoint.bin (or of the file itself, when
// given one) into a freshly built model, through the trainer's own reader
static void checkpoint_read_model(Llama* model, const char* dir_or_file) {
    char path[1024], err[1024];
    struct stat st;
    int is_dir = stat(dir_or_file, &st) == 0 && S_ISDIR(st.st_mode);
    if (is_dir) {
        snprintf(path, sizeof path, "%s/%s", dir_or_file, CHECKPOINT_FILE);
    } else {
        snprintf(path, sizeof path, "%s", dir_or_file);
    }
    if (checkpoint_load_params(path, model, err, sizeof err) != 0) { fatal("%s", err); }
}

// reads int32 B, T, then (B, T) token ids, each checked against the vocab and max_seq_len
static int* tokens_read(const char* path, const LlamaConfig* c, int* B, int* T) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) { fatal("cannot open tokens file %s (%s)", path, strerror(errno)); }
    int32_t bt[2];
    if (fread(bt, sizeof bt, 1, f) != 1) { fatal("%s: shorter than its int32 B, T header", path); }
    if (bt[0] <= 0 || bt[1] <= 0 || bt[1] > c->max_seq_len) {
        fatal("%s: B=%d T=%d; both must be positive and T at most the model's max_seq_len %d",
              path, bt[0], bt[1], c->max_seq_len);
    }
    size_t n = (size_t)bt[0] * bt[1];
    int* tokens = (int*)malloc_check(n * sizeof(int), "tokens"); // (B, T)
    if (fread(tokens, sizeof(int), n, f) != n || fgetc(f) != EOF) {
        fatal("%s: holds other than B*T=%zu int32 tokens after its header", path, n);
    }
    fclose(f);
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->V) {
            fatal("%s: token %d at position %zu is outside the vocab [0, %d)", path, tokens[i], i, c->V);
        }
    }
    *B = bt[0];
    *T = bt[1];
    return tokens;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s CKPT_DIR TOKENS.bin LOGITS.bin\n"
                        "writes the C model's float32 logits (B, T, V) for the int32 tokens in TOKENS.bin\n",
                argv[0]);
        return EXIT_FAILURE;
    }
    Llama model;
    checkpoint_read_model(&model, argv[1]);
    int B, T;
    int* tokens = tokens_read(argv[2], &model.config, &B, &T); // (B, T)
    llama_forward(&model, tokens, NULL, B, T);
    size_t n = (size_t)B * T * model.config.V;
    FILE* f = fopen(argv[3], "wb");
    if (f == NULL) { fatal("cannot write %s (%s)", argv[3], strerror(errno)); }
    if (fwrite(model.acts.logits, sizeof(float), n, f) != n || fclose(f) != 0) {
        fatal("writing %s failed (%s)", argv[3], strerror(errno));
    }
    printf("wrote %s: logits (B=%d, T=%d, V=%d)\n", argv[3], B, T, model.config.V);
    free(tokens);
    llama_free(&model);
    return 0;
}
