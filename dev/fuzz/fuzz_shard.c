// libFuzzer target for the shard header, the shard loader and the decoder file.
// The fuzz input is written to a file and used both as a one-shard training
// set and as a decoder file. Header ints 3..7 of a shard are reserved (zero
// in real shards, never read by the validator), so the target takes the
// loader's settings from bytes 12..19: B, T, vocab, shuffle, ranks, rank, seed.
// On top of "no crash, no sanitizer report" it traps if a batch breaks the
// loader's promises: ids below vocab, targets = inputs shifted by one, and a
// saved then restored position giving the same batches.
// Build and run: see dev/fuzz/README.md.
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TESTING
#include "../../train_llama_subtrack.c"

#define FUZZ_MAX_B 4
#define FUZZ_MAX_T 8
#define FUZZ_MAX_RANKS 3
#define FUZZ_MAX_STEPS 64

static char fuzz_path[64];

static void fuzz_setup(void) {
    if (fuzz_path[0] != '\0') { return; }
    char dir[] = "/tmp/fuzz_shard_XXXXXX";
    if (mkdtemp(dir) == NULL) { abort(); }
    snprintf(fuzz_path, sizeof(fuzz_path), "%s/input.bin", dir);
}

static void fuzz_batches(const uint8_t* data, size_t size) {
    ShardLoaderConfig cfg = {fuzz_path, "--train_data", 2, 3, SHARD_MAX_VOCAB, 0, 1, 0, 0};
    if (size >= 20) {
        cfg.B = 1 + data[12] % FUZZ_MAX_B;
        cfg.T = 1 + data[13] % FUZZ_MAX_T;
        cfg.vocab_size = 1 + (data[14] | data[15] << 8); // 1..65536
        cfg.shuffle = data[16] & 1;
        cfg.num_ranks = 1 + data[17] % FUZZ_MAX_RANKS;
        cfg.rank = data[18] % cfg.num_ranks;
        cfg.seed = data[19];
    }
    ShardLoader L;
    char msg[SHARD_MSG_CAP];
    if (shard_loader_init(&L, &cfg, msg, sizeof(msg)) != SHARD_OK) {
        if (strstr(msg, fuzz_path) == NULL && strstr(msg, "B=") == NULL) { __builtin_trap(); } // must name the file
        return;
    }
    const int B = cfg.B, T = cfg.T;
    int inputs[FUZZ_MAX_B * FUZZ_MAX_T], targets[FUZZ_MAX_B * FUZZ_MAX_T];
    int saved_in[4][FUZZ_MAX_B * FUZZ_MAX_T];
    int64_t steps = 2 * L.num_windows / ((int64_t)B * cfg.num_ranks) + 2; // past one wrap-around
    if (steps > FUZZ_MAX_STEPS) { steps = FUZZ_MAX_STEPS; }
    ShardPosition mid = {0};
    for (int64_t k = 0; k < steps; k++) {
        if (k == steps / 2) { mid = shard_loader_get_position(&L); }
        if (shard_loader_next_batch(&L, inputs, targets, msg, sizeof(msg)) != SHARD_OK) { __builtin_trap(); }
        for (int i = 0; i < B * T; i++) {
            if (inputs[i] < 0 || inputs[i] >= cfg.vocab_size || targets[i] < 0 || targets[i] >= cfg.vocab_size) { __builtin_trap(); }
            if (i % T != T - 1 && targets[i] != inputs[i + 1]) { __builtin_trap(); }
        }
        int64_t j = k - steps / 2;
        if (j >= 0 && j < 4) { memcpy(saved_in[j], inputs, sizeof(int) * B * T); }
    }
    // restore the middle position and replay
    if (shard_loader_set_position(&L, &mid, msg, sizeof(msg)) != SHARD_OK) { __builtin_trap(); }
    for (int64_t j = 0; j < 4 && steps / 2 + j < steps; j++) {
        if (shard_loader_next_batch(&L, inputs, targets, msg, sizeof(msg)) != SHARD_OK) { __builtin_trap(); }
        if (memcmp(saved_in[j], inputs, sizeof(int) * B * T) != 0) { __builtin_trap(); }
    }
    shard_loader_free(&L);
}

static void fuzz_decoder(void) {
    Decoder d;
    char msg[SHARD_MSG_CAP];
    if (decoder_load(&d, fuzz_path, msg, sizeof(msg)) != SHARD_OK) {
        if (strstr(msg, fuzz_path) == NULL) { __builtin_trap(); }
        return;
    }
    int ids[16];
    for (int i = 0; i < 16; i++) { ids[i] = i - 2; } // includes out-of-range ids
    char out[64];
    size_t n = decoder_decode(&d, ids, 16, out, sizeof(out));
    if (out[n < sizeof(out) ? n : sizeof(out) - 1] != '\0') { __builtin_trap(); } // always terminated
    FILE* sink = fopen("/dev/null", "w");
    if (sink != NULL) {
        for (int i = 0; i < 16; i++) { decoder_print_token(&d, ids[i], sink); }
        fclose(sink);
    }
    decoder_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz_setup();
    FILE* f = fopen(fuzz_path, "wb");
    if (f == NULL) { abort(); }
    if (size > 0 && fwrite(data, 1, size, f) != size) { abort(); }
    fclose(f);
    fuzz_batches(data, size);
    fuzz_decoder();
    return 0;
}
