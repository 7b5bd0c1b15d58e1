/* The streaming front-end of kws_ghost/frontend.py: frame i is samples [i*hop, i*hop + n_fft)
 * times a periodic Hann window centred in n_fft zeros; |rfft|^2; Slaney mel filters;
 * 10 log10(max(mel, floor)); MFCC by the orthonormal DCT-II (or the log-mel itself). The real
 * FFT is one complex FFT of half the size (n_fft / 2), so the stack holds n_fft floats. */
#include <math.h>
#include <string.h>

#include "kws.h"

#define HALF (KWS_N_FFT / 2)

void kws_frontend_reset(kws_frontend *fe) { memset(fe, 0, sizeof(*fe)); }

/* In-place radix-2 FFT of HALF complex values (twiddles from the n_fft tables: index 2k). */
static void fft_half(float *re, float *im) {
    int i, j = 0, size, k;
    for (i = 1; i < HALF; i++) { /* bit-reversed order */
        int bit = HALF >> 1;
        for (; j & bit; bit >>= 1) j ^= bit;
        j ^= bit;
        if (i < j) {
            float t = re[i];
            re[i] = re[j];
            re[j] = t;
            t = im[i];
            im[i] = im[j];
            im[j] = t;
        }
    }
    for (size = 2; size <= HALF; size <<= 1) {
        int step = KWS_N_FFT / size; /* twiddle index step: exp(-2 pi i k / size) */
        for (i = 0; i < HALF; i += size) {
            for (k = 0; k < size / 2; k++) {
                float wr = kws_fft_cos[k * step], wi = -kws_fft_sin[k * step];
                int a = i + k, b = i + k + size / 2;
                float tr = re[b] * wr - im[b] * wi, ti = re[b] * wi + im[b] * wr;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
    }
}

/* The features of the frame held in the ring, whose oldest sample is at `oldest`; the FFT
 * runs in `scratch` (n_fft floats). */
static void features(const float *ring, int oldest, float *frame, float *scratch) {
    float *re = scratch, *im = scratch + HALF;
    float *power = re; /* reused: power[0 .. HALF - 1]; the Nyquist bin apart */
    float nyquist, mel[KWS_N_MELS];
    int n, k, m;
    const float *weight = kws_mel_weights;
    for (n = 0; n < HALF; n++) { /* z[n] = x[2n] + i x[2n + 1] */
        re[n] = ring[(oldest + 2 * n) % KWS_N_FFT] * kws_window[2 * n];
        im[n] = ring[(oldest + 2 * n + 1) % KWS_N_FFT] * kws_window[2 * n + 1];
    }
    fft_half(re, im);
    nyquist = (re[0] - im[0]) * (re[0] - im[0]);
    re[0] = (re[0] + im[0]) * (re[0] + im[0]);
    im[0] = 0.0f;
    for (k = 1; k <= HALF / 2; k++) { /* X[k] and X[HALF - k] from Z[k] and Z[HALF - k] */
        int q = HALF - k;
        float er = 0.5f * (re[k] + re[q]), ei = 0.5f * (im[k] - im[q]);
        float orr = 0.5f * (im[k] + im[q]), oi = -0.5f * (re[k] - re[q]);
        float wr = kws_fft_cos[k], wi = -kws_fft_sin[k];
        float xr = er + wr * orr - wi * oi, xi = ei + wr * oi + wi * orr;
        /* X[q] = conj(E[k]) - conj(W^k O[k]) with W^q = -conj(W^k) */
        float yr = er - (wr * orr - wi * oi), yi = -ei + (wr * oi + wi * orr);
        re[k] = xr * xr + xi * xi;
        if (q != k) re[q] = yr * yr + yi * yi;
    }
    for (m = 0; m < KWS_N_MELS; m++) {
        float sum = 0.0f;
        int start = kws_mel_start[m];
        for (k = 0; k < kws_mel_count[m]; k++) {
            int bin = start + k;
            sum += weight[k] * (bin == HALF ? nyquist : power[bin]);
        }
        weight += kws_mel_count[m];
        mel[m] = 10.0f * log10f(sum > KWS_LOG_FLOOR ? sum : KWS_LOG_FLOOR);
    }
#if KWS_MFCC
    for (k = 0; k < KWS_N_MFCC; k++) {
        float sum = 0.0f;
        for (m = 0; m < KWS_N_MELS; m++) sum += kws_dct[k * KWS_N_MELS + m] * mel[m];
        frame[k] = sum;
    }
#else
    for (m = 0; m < KWS_N_MELS; m++) frame[m] = mel[m];
#endif
}

int kws_frontend_push(kws_frontend *fe, float sample, float *frame,
                      float scratch[KWS_SCRATCH_FLOATS]) {
    fe->samples[fe->filled % KWS_N_FFT] = sample; /* a ring of the last n_fft samples */
    fe->filled++;
    if (fe->filled < KWS_N_FFT || (fe->filled - KWS_N_FFT) % KWS_HOP != 0) return 0;
    features(fe->samples, (int)(fe->filled % KWS_N_FFT), frame, scratch);
    return 1;
}

float kws_frame_level(const float *frame) {
#if KWS_MFCC
    return frame[0] / sqrtf((float)KWS_N_MELS);
#else
    float sum = 0.0f;
    int m;
    for (m = 0; m < KWS_N_MELS; m++) sum += frame[m];
    return sum / KWS_N_MELS;
#endif
}
