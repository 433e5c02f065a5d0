/* Streams an answer through the llmcad C ABI: token ids on stdout (one line), text on stderr.
 *
 *   cc -std=c99 -Iinclude examples/c/stream.c -Ltarget/release -lllmcad \
 *      -Wl,-rpath,$PWD/target/release -o stream
 *   ./stream MODEL.gguf "What is the capital of France?" --chat -n 64
 *
 * Options: -n N (tokens), --chat, --ignore-eos, --f32, -t THREADS, --draft DRAFTER.gguf,
 * --tree-nodes N, --then PROMPT (a second turn continuing the conversation), --progress (report
 * the load on stderr). */
#include "llmcad.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int on_token(void *user, uint32_t id, const char *piece, size_t len) {
    int *count = (int *)user;
    if (id != LLMCAD_NO_TOKEN) {
        printf("%s%u", *count ? " " : "", (unsigned)id);
        ++*count;
    }
    fwrite(piece, 1, len, stderr);
    return 0; /* nonzero would stop */
}

/* What the load progress callback saw: its user_data. */
typedef struct {
    unsigned reports, loads, bad;
    size_t done, total;
} Progress;

/* Called on this thread during llmcad_engine_new, once per tensor loaded. */
static void on_progress(const LlmcadLoadStatus *status, void *user_data) {
    Progress *p = (Progress *)user_data;
    if (status->tensors_done == 1) ++p->loads; /* the target, then the drafter */
    else if (status->tensors_done < p->done || status->tensors != p->total) ++p->bad;
    p->done = status->tensors_done;
    p->total = status->tensors;
    ++p->reports;
    if (status->tensors_done == status->tensors)
        fprintf(stderr, "[loaded %zu/%zu tensors%s%s]\n", status->tensors_done, status->tensors,
                status->quantizing_to ? ", quantized to " : "",
                status->quantizing_to ? status->quantizing_to : "");
}

static int turn(LlmcadEngine *engine, const char *prompt, int chat,
                const LlmcadGenerateParams *params) {
    int count = 0;
    LlmcadStats stats;
    LlmcadStatus st = llmcad_generate(engine, prompt, chat, params, on_token, &count, &stats);
    printf("\n");
    fprintf(stderr, "\n");
    if (st != LLMCAD_STATUS_OK) {
        fprintf(stderr, "llmcad_generate: %s (status %d)\n", llmcad_last_error(), (int)st);
        return 1;
    }
    fprintf(stderr, "[%u tokens, %.1f tokens/s, stop %d]\n", stats.generated_tokens,
            stats.tokens_per_s, stats.stop);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL PROMPT [-n N] [--chat] [--ignore-eos] [--f32] "
                        "[-t THREADS] [--draft MODEL] [--tree-nodes N] [--then PROMPT] "
                        "[--progress]\n",
                argv[0]);
        return 2;
    }
    LlmcadOptions opts;
    llmcad_options_init(&opts);
    opts.target = argv[1];
    LlmcadGenerateParams params;
    llmcad_generate_params_init(&params);
    int chat = 0;
    const char *then = NULL;
    Progress progress = {0, 0, 0, 0, 0};
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--ignore-eos")) params.ignore_eos = 1;
        else if (!strcmp(a, "--f32")) opts.f32_activations = 1;
        else if (!strcmp(a, "--progress")) {
            opts.progress = on_progress;
            opts.progress_user_data = &progress;
        }
        else if (next && !strcmp(a, "-n")) params.max_tokens = (uint32_t)atoi(argv[++i]);
        else if (next && !strcmp(a, "-t")) opts.threads = (uint32_t)atoi(argv[++i]);
        else if (next && !strcmp(a, "--draft")) opts.drafter = argv[++i];
        else if (next && !strcmp(a, "--tree-nodes")) opts.tree_nodes = (uint32_t)atoi(argv[++i]);
        else if (next && !strcmp(a, "--then")) then = argv[++i];
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    fprintf(stderr, "llmcad %s\n", llmcad_version());
    LlmcadEngine *engine = llmcad_engine_new(&opts);
    if (!engine) {
        fprintf(stderr, "llmcad_engine_new: %s\n", llmcad_last_error());
        return 1;
    }
    if (opts.progress)
        fprintf(stderr, "[progress: %u reports, %u loads, %u out of order]\n", progress.reports,
                progress.loads, progress.bad);
    int rc = turn(engine, argv[2], chat, &params);
    if (!rc && then) rc = turn(engine, then, chat, &params);
    llmcad_engine_free(engine);
    return rc;
}
