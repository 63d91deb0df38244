// libFuzzer target for the model config reader (llama_config_from_json_text,
// the json scanner under --model_config FILE.json). each input is the text of
// a config file. besides crashes and sanitizer reports (the reader must read
// only the bytes it is given, so the input is not NUL-terminated), it traps
// when the reader breaks a promise:
//   - an accepted config is valid (llama_config_problem) and survives a round
//     trip: written back as json and read again, it is the same config
//   - a refused one leaves the config untouched, and its message names the
//     file and is printable text
//   - nested values never count: any input that is json (accepted, or refused
//     for its values) and put as a nested value into a valid config, under a
//     key or in an array, gives exactly that config
// seeds: python dev/fuzz/make_config_seeds.py DIR. build and run: see
// dev/fuzz/README.md.
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TESTING
#include "../../train_llama_subtrack.c"

#define FUZZ_PATH "fuzz.json"
// the keys of the "tiny" preset
#define FUZZ_TINY "\"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 176, " \
                  "\"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"max_position_embeddings\": 64"

static int fuzz_read(LlamaConfig* c, const char* text, size_t n, char* err, size_t cap) {
    memset(err, 0, cap);
    return llama_config_from_json_text(c, text, n, FUZZ_PATH, err, cap);
}

// a message names the file, and is one line of printable ascii
static void fuzz_check_message(const char* err) {
    if (strncmp(err, FUZZ_PATH ": ", strlen(FUZZ_PATH ": ")) != 0) { __builtin_trap(); }
    for (const char* p = err; *p; p++) {
        if (*p < 0x20 || *p > 0x7e) { __builtin_trap(); }
    }
}

// the config as json, the way transformers would write its keys
static size_t fuzz_write(const LlamaConfig* c, char* out, size_t cap) {
    int n = snprintf(out, cap, "{\"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d, "
                     "\"num_attention_heads\": %d, \"num_hidden_layers\": %d, \"max_position_embeddings\": %d, "
                     "\"rms_norm_eps\": %.9g, \"rope_theta\": %.9g, \"tie_word_embeddings\": false}",
                     c->V, c->C, c->F, c->NH, c->L, c->max_seq_len, c->norm_eps, c->rope_theta);
    if (n < 0 || (size_t)n >= cap) { __builtin_trap(); }
    return (size_t)n;
}

// the input nested into the tiny config: before the keys, or after them in an array
static void fuzz_check_nested(const char* text, size_t n, const LlamaConfig* tiny, int where) {
    static const char* const heads[2] = {"{\"text_config\": ", "{" FUZZ_TINY ", \"list\": [1, "};
    static const char* const tails[2] = {", " FUZZ_TINY "}", "]}"};
    size_t hn = strlen(heads[where]), tn = strlen(tails[where]);
    char* wrapped = (char*)malloc(hn + n + tn);
    if (wrapped == NULL) { return; }
    memcpy(wrapped, heads[where], hn);
    memcpy(wrapped + hn, text, n);
    memcpy(wrapped + hn + n, tails[where], tn);
    LlamaConfig got;
    char err[1024];
    int rc = fuzz_read(&got, wrapped, hn + n + tn, err, sizeof err);
    free(wrapped);
    // one level deeper may pass the nesting limit; nothing else may differ
    if (rc != 0 && strstr(err, "nested more than") == NULL) { __builtin_trap(); }
    if (rc == 0 && memcmp(&got, tiny, sizeof got) != 0) { __builtin_trap(); }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // an exact-size copy, so that a read past the end is a sanitizer report
    char* text = (char*)malloc(size > 0 ? size : 1);
    if (text == NULL) { return 0; }
    memcpy(text, data, size);
    LlamaConfig c, before, tiny;
    memset(&c, 0xA5, sizeof c);
    before = c;
    llama_preset_find("tiny", &tiny);
    char err[1024];
    int rc = fuzz_read(&c, text, size, err, sizeof err);
    if (rc == 0) {
        if (llama_config_problem(&c) != NULL) { __builtin_trap(); }
        char json[1024];
        size_t n = fuzz_write(&c, json, sizeof json);
        LlamaConfig again;
        if (fuzz_read(&again, json, n, err, sizeof err) != 0 || memcmp(&again, &c, sizeof c) != 0) { __builtin_trap(); }
    } else {
        if (memcmp(&c, &before, sizeof c) != 0) { __builtin_trap(); }
        fuzz_check_message(err);
    }
    // json that the scan accepted: as a nested value it must not count
    int is_json = rc == 0 || (strstr(err, ": not valid json: ") == NULL && strstr(err, ": larger than") == NULL);
    if (is_json) {
        fuzz_check_nested(text, size, &tiny, 0);
        fuzz_check_nested(text, size, &tiny, 1);
    }
    free(text);
    return 0;
}
