// libFuzzer target for the checkpoint reader (checkpoint_read_settings,
// checkpoint_settings_compare, checkpoint_load, checkpoint_load_params). each
// input is written as DIR/checkpoint.bin and resumed into a fixed small run:
// the `tiny` preset with low-rank AdamW (SubTrack++, rank 2), its data a
// synthetic shard. besides crashes and sanitizer reports, it traps when a
// load succeeds with state that is not finite or a step out of range, or
// when a refusal's message does not name the file.
//
// the body is checksummed, so plain byte mutations almost never get past the
// CRC. the custom mutator below repairs the trailer (magic and CRC32C) of 3 in
// 4 mutants, so that the checks behind the CRC are fuzzed too; the other 1 in
// 4 keep the CRC path itself under test.
//
// seeds: FUZZ_CHECKPOINT_SEEDS=DIR makes the target write valid checkpoints
// of this run into DIR at start (after 1, 2 and 5 steps). build and run: see
// dev/fuzz/README.md.
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

size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

static char fuzz_dir[64];
static Llama fuzz_model;
static Optimizer fuzz_opt;
static ShardLoader fuzz_loader;
static Rng fuzz_rng;
static TrainConfig fuzz_t;

// a shard of 2000 tokens below the tiny preset's vocab (256)
static void write_shard(const char* path) {
    FILE* f = fopen(path, "wb");
    if (f == NULL) { abort(); }
    int32_t header[256] = {SHARD_MAGIC, SHARD_VERSION, 2000};
    fwrite(header, sizeof header, 1, f);
    for (int i = 0; i < 2000; i++) { uint16_t id = (uint16_t)((i * 37) % 256); fwrite(&id, 2, 1, f); }
    fclose(f);
}

static void fuzz_setup(void) {
    if (fuzz_dir[0] != '\0') { return; }
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s", "/tmp/fuzz_checkpoint_XXXXXX");
    if (mkdtemp(fuzz_dir) == NULL) { abort(); }
    char shard[128];
    snprintf(shard, sizeof shard, "%s/shard.bin", fuzz_dir);
    write_shard(shard);
    char* argv[] = {(char*)"fuzz", (char*)"--model_config", (char*)"tiny", (char*)"--batch_size", (char*)"1",
                    (char*)"--max_length", (char*)"8", (char*)"--rank", (char*)"2",
                    (char*)"--subspace_update_interval", (char*)"2"};
    char err[1024];
    if (train_config_from_args(&fuzz_t, 11, argv, "float32", err, sizeof err) != 0) { abort(); }
    LlamaConfig c;
    llama_preset_find("tiny", &c);
    llama_build(&fuzz_model, &c);
    llama_init_weights(&fuzz_model, 1);
    if (optimizer_build(&fuzz_opt, &c, &fuzz_t) != NULL) { abort(); }
    ShardLoaderConfig lc = {shard, "--train_data", 1, 8, c.V, 0, 1, 1, 0};
    if (shard_loader_init(&fuzz_loader, &lc, err, sizeof err) != SHARD_OK) { abort(); }
    rng_seed(&fuzz_rng, 1000);
    // seeds: valid checkpoints of this run after a few steps
    const char* seeds = getenv("FUZZ_CHECKPOINT_SEEDS");
    if (seeds != NULL && seeds[0] != '\0') {
        int inputs[8], targets[8];
        TrainState s = {&fuzz_model, &fuzz_opt, &fuzz_loader, &fuzz_rng, &fuzz_t};
        for (int step = 1; step <= 5; step++) {
            llama_zero_grad(&fuzz_model);
            shard_loader_next_batch_or_exit(&fuzz_loader, inputs, targets);
            llama_forward(&fuzz_model, inputs, targets, 1, 8);
            llama_backward(&fuzz_model, inputs, targets, 1.0f);
            optimizer_step(&fuzz_opt, &fuzz_model, 1e-3f);
            if (step == 1 || step == 2 || step == 5) {
                if (checkpoint_save(&s, fuzz_dir, err, sizeof err) != 0) { abort(); }
                char from[128], to[512], cmd[700];
                snprintf(from, sizeof from, "%s/%s", fuzz_dir, CHECKPOINT_FILE);
                snprintf(to, sizeof to, "%s/seed_step%d.bin", seeds, step);
                snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s'", seeds, from, to);
                if (system(cmd) != 0) { abort(); }
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz_setup();
    char path[128], err[2048];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir, CHECKPOINT_FILE);
    FILE* f = fopen(path, "wb");
    if (f == NULL) { abort(); }
    if (size > 0 && fwrite(data, 1, size, f) != size) { abort(); }
    fclose(f);
    // the settings check a resume does first
    int64_t h[CHECKPOINT_HEADER_INTS];
    char saved[CHECKPOINT_SETTINGS_MAX + 8], problems[4096], changed[CHECKPOINT_SETTINGS_MAX];
    if (checkpoint_read_settings(fuzz_dir, h, saved, sizeof saved, err, sizeof err) == 0) {
        checkpoint_settings_compare(&fuzz_t, saved, problems, sizeof problems, changed, sizeof changed);
    } else if (strstr(err, fuzz_dir) == NULL) {
        __builtin_trap();
    }
    // the full load
    TrainState s = {&fuzz_model, &fuzz_opt, &fuzz_loader, &fuzz_rng, &fuzz_t};
    if (checkpoint_load(&s, fuzz_dir, err, sizeof err) == 0) {
        if (!train_state_is_finite(&s) || fuzz_opt.step < 0) { __builtin_trap(); }
    } else if (strstr(err, fuzz_dir) == NULL) {
        __builtin_trap();
    }
    // the weights-only reader of the export check
    Llama m;
    memset(&m, 0, sizeof m);
    if (checkpoint_load_params(path, &m, err, sizeof err) == 0) {
        if (!floats_are_finite(m.params_memory, m.num_parameters)) { __builtin_trap(); }
        llama_free(&m);
    } else if (strstr(err, path) == NULL) {
        __builtin_trap();
    }
    return 0;
}

// byte mutations, then (3 times in 4) a trailer that matches: its magic and
// the CRC32C of everything before it
size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
    size = LLVMFuzzerMutate(data, size, max_size);
    if (seed % 4 != 0 && size >= 16 + CHECKPOINT_HEADER_INTS * 8) {
        int64_t magic = CHECKPOINT_TRAILER_MAGIC;
        uint64_t crc = crc32c_update(0, data, size - 16);
        memcpy(data + size - 16, &magic, 8);
        memcpy(data + size - 8, &crc, 8);
    }
    return size;
}
