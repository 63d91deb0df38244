/*
Optimizer-state memory of any model config and rank, from the trainer's own
accounting, without allocating the model: for each CONFIG:RANK argument it
runs the same per-tensor rule as optimizer_build() (parameter_table(),
optimizer_uses_lowrank(), lowrank_check_rank(), lowrank_state_num_floats())
and prints one tab-separated row of float counts.

build and run (from the repository root):
    gcc -O2 -fopenmp -o dev/experiments/memory_accounting dev/experiments/memory_accounting.c -lm
    ./dev/experiments/memory_accounting llama_60m:128 llama_1b:512 dev/experiments/my_config.json:32

columns (all counts are float32 values; multiply by 4 for bytes):
    config           the preset name or .json path, as given
    V C F NH L       the model's vocab, hidden, intermediate, heads, layers
    rank             R
    params           parameters of the model
    adamw_floats     states of full-rank AdamW: 2 moments per parameter
    lowrank_floats   states of low-rank AdamW (GaLore and SubTrack++ keep the
                     same per-matrix state here: S, M, V and 2 limiter scalars)
    lowrank_adam     the part of lowrank_floats that is plain AdamW moments
                     (embeddings, lm_head, norms)
    lowrank_matrix   the part that is the 7 layer matrices' S, M, V, scalars
    lowrank_adafactor_floats  states of low_rank_adafactor without a first moment
                     (the authors' beta1 0): Adafactor's statistics of the
                     embeddings, lm_head and norms, and each layer matrix's S,
                     statistics (lowrank_state_num_floats_adafactor) and scalars
dev/experiments/memory_table.py builds and runs this.
*/
#include <limits.h>
#define TESTING
#include "../../train_llama_subtrack.c"

// prints the row for one CONFIG:RANK; returns 0, or 1 after a message on stderr
static int memory_accounting_row(const char* arg) {
    char name[1024];
    const char* colon = strrchr(arg, ':');
    if (colon == NULL || colon == arg || colon[1] == '\0' || (size_t)(colon - arg) >= sizeof name) {
        fprintf(stderr, "memory_accounting: '%s' is not CONFIG:RANK; e.g. llama_60m:128\n", arg);
        return 1;
    }
    memcpy(name, arg, (size_t)(colon - arg));
    name[colon - arg] = '\0';
    char* end;
    long rank = strtol(colon + 1, &end, 10);
    if (*end != '\0' || rank <= 0 || rank > INT_MAX) {
        fprintf(stderr, "memory_accounting: rank '%s' in '%s' is not a positive integer\n", colon + 1, arg);
        return 1;
    }
    LlamaConfig cfg;
    llama_config_resolve_or_exit(&cfg, name);  // exits with the trainer's own message if unknown

    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, &cfg);
    Optimizer rule;  // only its low_rank switch is read, by optimizer_uses_lowrank()
    memset(&rule, 0, sizeof rule);
    rule.low_rank = 1;
    size_t lowrank_adam = 0, lowrank_matrix = 0, adafactor = 0;
    char msg[512];
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (!optimizer_uses_lowrank(&rule, &spec[i])) {
            lowrank_adam += 2 * tensor_numel(&spec[i]);
            adafactor += (size_t)spec[i].layers * adafactor_stats_floats(spec[i].rows, spec[i].cols);
            continue;
        }
        if (lowrank_check_rank(msg, sizeof msg, spec[i].name, spec[i].rows, spec[i].cols, (int)rank) != NULL) {
            fprintf(stderr, "memory_accounting: %s: %s\n", name, msg);
            return 1;
        }
        lowrank_matrix += (size_t)spec[i].layers * lowrank_state_num_floats(spec[i].rows, spec[i].cols,
                                                                            spec[i].rows > spec[i].cols, (int)rank);
        adafactor += (size_t)spec[i].layers * lowrank_state_num_floats_adafactor(spec[i].rows, spec[i].cols,
                                                                                 spec[i].rows > spec[i].cols,
                                                                                 (int)rank, 0);
    }
    size_t params = parameter_count(&cfg);
    printf("%s\t%d\t%d\t%d\t%d\t%d\t%ld\t%zu\t%zu\t%zu\t%zu\t%zu\t%zu\n", name, cfg.V, cfg.C, cfg.F, cfg.NH,
           cfg.L, rank, params, 2 * params, lowrank_adam + lowrank_matrix, lowrank_adam, lowrank_matrix, adafactor);
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG:RANK [CONFIG:RANK ...]   (CONFIG: a preset or a .json)\n", argv[0]);
        return 1;
    }
    printf("config\tV\tC\tF\tNH\tL\trank\tparams\tadamw_floats\tlowrank_floats\tlowrank_adam\tlowrank_matrix\t"
           "lowrank_adafactor_floats\n");
    int failed = 0;
    for (int i = 1; i < argc; i++) { failed |= memory_accounting_row(argv[i]); }
    return failed;
}
