/* kws-ghost C runtime: a keyword spotter in C99, no heap, no dependency beyond libc and libm.
 *
 *   kws_frontend: 16 kHz samples in, one feature frame out every 10 ms (kws_ghost/frontend.py)
 *   kws_step:     one frame through the recurrent model, its state carried (the exported step)
 *   kws_decoder:  posteriors in, keyword events out (smoothing, threshold, patience, refractory;
 *                 the word's span from the frames' levels), as `kws-ghost detect` decides them
 *
 * The model's sizes, weights, labels and threshold table are in kws_model.h / kws_model.c,
 * written by `kws-ghost export MODEL --format c`. All memory is the caller's: a kws_detector
 * (or its parts) can live in static storage; KWS_STATE_FLOATS and KWS_SCRATCH_FLOATS say what
 * the step needs.
 */
#ifndef KWS_H
#define KWS_H

#include "kws_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- the model's tables */
#if KWS_INT8
typedef signed char kws_weight; /* int8 weights, one float scale per output row */
#else
typedef float kws_weight;
#endif

/* A layer's weights; matrices are stored transposed ([inputs][outputs]) so that a product
 * runs down contiguous columns and vectorises without reassociating sums. */
typedef struct {
    int inputs;
    const kws_weight *w_ih;  /* [inputs][KWS_GATES * KWS_M] */
    const float *s_ih;       /* int8: scale of each output row; fp32: NULL */
    const kws_weight *w_hh;  /* [KWS_HIDDEN][KWS_GATES * KWS_M] */
    const float *s_hh;
    const float *b_ih, *b_hh;
    const kws_weight *ghost_w; /* linear cheap operation: [KWS_M][KWS_GHOST]; else NULL */
    const float *s_ghost;
    const float *ghost_scale; /* elementwise cheap operation: [KWS_GHOST]; else NULL */
    const float *ghost_b;     /* [KWS_GHOST] */
} kws_layer;

extern const kws_layer kws_layers[KWS_LAYERS];
extern const float kws_mean[KWS_N_FEATURES], kws_inv_std[KWS_N_FEATURES];
extern const kws_weight kws_head_w[KWS_HIDDEN * KWS_N_CLASSES]; /* [KWS_HIDDEN][classes] */
extern const float *const kws_head_s;
extern const float kws_head_b[KWS_N_CLASSES];
extern const char *const kws_labels[KWS_N_CLASSES];
extern const int kws_is_keyword[KWS_N_CLASSES]; /* 0 for _silence_ and _unknown_ */
/* front-end tables */
extern const float kws_window[KWS_N_FFT];
extern const float kws_fft_cos[KWS_N_FFT / 2], kws_fft_sin[KWS_N_FFT / 2];
extern const short kws_mel_start[KWS_N_MELS], kws_mel_count[KWS_N_MELS];
extern const float kws_mel_weights[];
extern const float kws_dct[KWS_N_MFCC * KWS_N_MELS];
/* decoder: thresholds by validation false alarms per hour (ascending thresholds) */
extern const double kws_det_threshold[], kws_det_fa_per_hour[]; /* KWS_N_THRESHOLDS each */

/* ---------------------------------------------------------------- front-end */
typedef struct {
    float samples[KWS_N_FFT]; /* a ring of the last n_fft samples */
    long filled;              /* samples seen so far */
} kws_frontend;

void kws_frontend_reset(kws_frontend *fe);
/* Add one sample (float in [-1, 1]); returns 1 and writes KWS_N_FEATURES floats to `frame`
 * when the sample completes a frame, else 0. `scratch`: the step's (KWS_SCRATCH_FLOATS),
 * which the front-end uses while it computes a frame (its FFT). */
int kws_frontend_push(kws_frontend *fe, float sample, float *frame,
                      float scratch[KWS_SCRATCH_FLOATS]);
/* The frame's level in dB (what the decoder finds a word's span by). */
float kws_frame_level(const float *frame);

/* ---------------------------------------------------------------- model step */
/* The state at the start of a stream. */
void kws_reset(float state[KWS_STATE_FLOATS]);
/* One frame of raw features -> KWS_N_CLASSES logits; `state` is carried from call to call. */
void kws_step(const float *frame, float state[KWS_STATE_FLOATS], float *logits,
              float scratch[KWS_SCRATCH_FLOATS]);
void kws_softmax(const float *logits, float *posteriors);

/* ---------------------------------------------------------------- decoder */
typedef struct {
    int keyword; /* class index into kws_labels */
    double start, end, score;
} kws_event;

typedef struct {
    double threshold;
    float ring[KWS_SMOOTH_FRAMES][KWS_N_CLASSES]; /* the last posteriors, for the average */
    float levels[KWS_LEVEL_FRAMES];              /* the last frames' levels (ring) */
    long frames;                                 /* frames seen */
    int run_open;
    long run_first, run_last, quiet_until;
    double peaks[KWS_N_CLASSES];
    double top_score;
} kws_decoder;

void kws_decoder_reset(kws_decoder *d, double threshold);
/* The threshold whose validation false-alarm rate is at most `per_hour` (the lowest such;
 * else the highest threshold); the model's own operating point when `per_hour` < 0. */
double kws_threshold_for(double per_hour);
/* One frame's posteriors and level; returns 1 and fills `event` when an event is decided. */
int kws_decoder_push(kws_decoder *d, const float *posteriors, float level, kws_event *event);
/* End of the stream: an event still open. */
int kws_decoder_flush(kws_decoder *d, kws_event *event);

#ifdef __cplusplus
}
#endif
#endif
