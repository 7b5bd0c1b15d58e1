/* kws-detect: raw 16 kHz 16-bit little-endian mono PCM on stdin -> one JSON line per keyword
 * event on stdout, in the format of `kws-ghost detect --format json`:
 *
 *   arecord -f S16_LE -r 16000 -c 1 | ./kws-detect [--false-alarms-per-hour R | --threshold T]
 *
 * Everything lives in static storage: no heap. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kws.h"

static kws_frontend frontend;
static kws_decoder decoder;
static float state[KWS_STATE_FLOATS], scratch[KWS_SCRATCH_FLOATS];

static void print_event(const kws_event *e) {
    printf("{\"file\": \"-\", \"keyword\": \"%s\", \"start\": %.3f, \"end\": %.3f, \"score\": %.4f}\n",
           kws_labels[e->keyword], e->start, e->end, e->score);
    fflush(stdout);
}

static int number(const char *text, double *value) {
    char *end;
    *value = strtod(text, &end);
    return end != text && *end == '\0';
}

int main(int argc, char **argv) {
    static unsigned char bytes[320]; /* 10 ms a read */
    double threshold = KWS_DEFAULT_THRESHOLD, value;
    float frame[KWS_N_FEATURES], logits[KWS_N_CLASSES], posteriors[KWS_N_CLASSES];
    size_t got, carry = 0, i;
    kws_event event;
    int a;
    for (a = 1; a < argc; a++) {
        int rate = strcmp(argv[a], "--false-alarms-per-hour") == 0;
        if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) {
            printf("usage: %s [--false-alarms-per-hour R | --threshold T] < pcm16-16k-mono\n",
                   argv[0]);
            return 0;
        }
        if ((rate || strcmp(argv[a], "--threshold") == 0) && a + 1 < argc &&
            number(argv[a + 1], &value)) {
            if (!rate && (value <= 0.0 || value > 1.0)) {
                fprintf(stderr, "error: --threshold must be in (0, 1], not %s\n", argv[a + 1]);
                return 2;
            }
            threshold = rate ? kws_threshold_for(value) : value;
            a++;
            continue;
        }
        fprintf(stderr, "error: bad argument %s (see %s --help)\n", argv[a], argv[0]);
        return 2;
    }
    kws_frontend_reset(&frontend);
    kws_reset(state);
    kws_decoder_reset(&decoder, threshold);
    while ((got = fread(bytes + carry, 1, sizeof(bytes) - carry, stdin)) > 0) {
        size_t whole = (carry + got) & ~(size_t)1;
        for (i = 0; i < whole; i += 2) {
            short sample = (short)(bytes[i] | (bytes[i + 1] << 8));
            if (!kws_frontend_push(&frontend, sample / 32768.0f, frame, scratch)) continue;
            kws_step(frame, state, logits, scratch);
            kws_softmax(logits, posteriors);
            if (kws_decoder_push(&decoder, posteriors, kws_frame_level(frame), &event))
                print_event(&event);
        }
        carry = carry + got - whole; /* an odd byte waits for its partner */
        if (carry) bytes[0] = bytes[whole];
    }
    if (ferror(stdin)) {
        fprintf(stderr, "error: cannot read stdin\n");
        return 1;
    }
    if (kws_decoder_flush(&decoder, &event)) print_event(&event);
    return 0;
}
