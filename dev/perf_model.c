/*
dev/perf_model.c: the performance model of dev/perf_model.h as a plain C
program, with the trainer's preset table: no CUDA, no GPU. the same model
is dev/bench_gpu --model; this build exists so that make test can run the
model's self-check on any machine (gcc alone, about two seconds to build).

    make dev/perf_model
    ./dev/perf_model --model                  # every row and summary, the authors' 60m 350m 1b 7b recipes
    ./dev/perf_model --table                  # the README's table
    ./dev/perf_model --check                  # the self-check; ends with "N passed, N failed"
    ./dev/perf_model --scale                  # many GPUs (issue [5/6]): DDP and ZeRO-1, 1 to 512 GPUs (estimates)
    ./dev/perf_model --scale --table --preset 1b,7b   # the README's scale table
    ./dev/perf_model --help
*/
#define TESTING
#include "../train_llama_subtrack.c"
#include "perf_model.h"

// the trainer's preset, by its name or without "llama_" ("1b")
static int perf_find_preset(const char* name, PerfDims* d, char* full, size_t cap) {
    for (int i = 0; i < NUM_LLAMA_PRESETS; i++) {
        const char* p = LLAMA_PRESETS[i].name;
        if (strcmp(name, p) == 0 || (strncmp(p, "llama_", 6) == 0 && strcmp(name, p + 6) == 0)) {
            const LlamaConfig* c = &LLAMA_PRESETS[i].cfg;
            d->V = c->V; d->C = c->C; d->F = c->F; d->NH = c->NH; d->L = c->L;
            snprintf(full, cap, "%s", p);
            return 1;
        }
    }
    return 0;
}

static double perf_parameter_count(const PerfDims* d) {
    LlamaConfig c;
    memset(&c, 0, sizeof c);
    c.V = d->V; c.C = d->C; c.F = d->F; c.NH = d->NH; c.L = d->L;
    return (double)parameter_count(&c);
}

int main(int argc, char** argv) {
    PerfTrainerFacts facts = {perf_find_preset, perf_parameter_count};
    return perf_model_main(argc, argv, &facts);
}
