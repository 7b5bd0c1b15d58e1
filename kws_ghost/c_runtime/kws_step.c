/* The recurrent step: GhostGRU / GhostLSTM (and plain GRU / LSTM, which have no ghost part),
 * the equations of kws_ghost/cell.py. A layer's state is its whole output y = [h ; g] (and c
 * for the LSTM): g = act(A h + b) is kept rather than recomputed from h at the next frame. */
#include <math.h>
#include <string.h>

#include "kws.h"

#define KWS_ROWS (KWS_GATES * KWS_M)
#define KWS_LAYER_FLOATS (KWS_HIDDEN + (KWS_LSTM ? KWS_M : 0))

static float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/* tanh through expf: libm's tanhf took a third of the whole program's time */
static float tanh_fast(float v) { return 1.0f - 2.0f / (expf(2.0f * v) + 1.0f); }

#if KWS_GHOST > 0
static float activate(float v) {
#if KWS_ACT == 1
    return tanh_fast(v);
#elif KWS_ACT == 2
    return v > 0.0f ? v : 0.0f;
#elif KWS_ACT == 3
    return sigmoid(v);
#else
    return v;
#endif
}
#endif

/* out = bias + W x, W stored [inputs][rows] (int8 weights: scaled per row at the end). The
 * sums run down the rows, which vectorises without reassociating them, four columns a pass
 * (a quarter of the accumulators' loads and stores): 1.6x faster than one at -O3 here. */
static void affine(float *restrict acc, const kws_weight *restrict w, const float *scale,
                   const float *bias, const float *restrict x, int inputs, int rows) {
    int i, j; /* the sums build up in the output itself: no stack beyond a few words */
    for (i = 0; i < rows; i++) acc[i] = 0.0f;
    for (j = 0; j + 4 <= inputs; j += 4) {
        const kws_weight *c0 = w + (long)j * rows, *c1 = c0 + rows, *c2 = c1 + rows;
        const kws_weight *c3 = c2 + rows;
        const float x0 = x[j], x1 = x[j + 1], x2 = x[j + 2], x3 = x[j + 3];
        for (i = 0; i < rows; i++)
            acc[i] += ((float)c0[i] * x0 + (float)c1[i] * x1) +
                      ((float)c2[i] * x2 + (float)c3[i] * x3);
    }
    for (; j < inputs; j++) {
        const kws_weight *column = w + (long)j * rows;
        const float xj = x[j];
        for (i = 0; i < rows; i++) acc[i] += (float)column[i] * xj;
    }
    for (i = 0; i < rows; i++) acc[i] = bias[i] + (scale != NULL ? acc[i] * scale[i] : acc[i]);
}

/* g = act(A h + b) into y[m .. H) */
static void ghost(const kws_layer *layer, float *y) {
#if KWS_GHOST > 0
    int j;
    if (layer->ghost_w != NULL) {
        affine(y + KWS_M, layer->ghost_w, layer->s_ghost, layer->ghost_b, y, KWS_M, KWS_GHOST);
        for (j = 0; j < KWS_GHOST; j++) y[KWS_M + j] = activate(y[KWS_M + j]);
    } else {
        for (j = 0; j < KWS_GHOST; j++)
            y[KWS_M + j] = activate(layer->ghost_scale[j] * y[j % KWS_M] + layer->ghost_b[j]);
    }
#else
    (void)layer;
    (void)y;
#endif
}

void kws_reset(float state[KWS_STATE_FLOATS]) {
    int l;
    memset(state, 0, sizeof(float) * KWS_STATE_FLOATS);
    for (l = 0; l < KWS_LAYERS; l++) ghost(&kws_layers[l], state + l * KWS_LAYER_FLOATS); /* g(0) */
}

void kws_step(const float *frame, float state[KWS_STATE_FLOATS], float *logits,
              float scratch[KWS_SCRATCH_FLOATS]) {
    float *gi = scratch, *gh = scratch + KWS_ROWS;
    float *x = scratch + 2 * KWS_ROWS; /* the normalised frame */
    const float *input = x;
    int l, k;
    for (k = 0; k < KWS_N_FEATURES; k++) x[k] = (frame[k] - kws_mean[k]) * kws_inv_std[k];
    for (l = 0; l < KWS_LAYERS; l++) {
        const kws_layer *layer = &kws_layers[l];
        float *y = state + l * KWS_LAYER_FLOATS; /* [h ; g] of the last frame, then this one */
        affine(gi, layer->w_ih, layer->s_ih, layer->b_ih, input, layer->inputs, KWS_ROWS);
        affine(gh, layer->w_hh, layer->s_hh, layer->b_hh, y, KWS_HIDDEN, KWS_ROWS);
#if KWS_LSTM
        {
            float *c = y + KWS_HIDDEN;
            for (k = 0; k < KWS_M; k++) {
                float i = sigmoid(gi[k] + gh[k]);
                float f = sigmoid(gi[KWS_M + k] + gh[KWS_M + k]);
                float g = tanh_fast(gi[2 * KWS_M + k] + gh[2 * KWS_M + k]);
                float o = sigmoid(gi[3 * KWS_M + k] + gh[3 * KWS_M + k]);
                c[k] = f * c[k] + i * g;
                y[k] = o * tanh_fast(c[k]);
            }
        }
#else
        for (k = 0; k < KWS_M; k++) {
            float r = sigmoid(gi[k] + gh[k]);
            float z = sigmoid(gi[KWS_M + k] + gh[KWS_M + k]);
            float n = tanh_fast(gi[2 * KWS_M + k] + r * gh[2 * KWS_M + k]);
            y[k] = n + z * (y[k] - n); /* (1 - z) n + z h */
        }
#endif
        ghost(layer, y);
        input = y;
    }
    affine(logits, kws_head_w, kws_head_s, kws_head_b, input, KWS_HIDDEN, KWS_N_CLASSES);
}

void kws_softmax(const float *logits, float *posteriors) {
    float top = logits[0], sum = 0.0f;
    int k;
    for (k = 1; k < KWS_N_CLASSES; k++)
        if (logits[k] > top) top = logits[k];
    for (k = 0; k < KWS_N_CLASSES; k++) {
        posteriors[k] = expf(logits[k] - top);
        sum += posteriors[k];
    }
    for (k = 0; k < KWS_N_CLASSES; k++) posteriors[k] /= sum;
}
