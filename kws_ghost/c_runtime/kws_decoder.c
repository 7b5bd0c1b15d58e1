/* The event decoder of kws_ghost/stream.py (EventDecoder), frame by frame: each keyword's
 * posterior averaged over the last KWS_SMOOTH_FRAMES frames; a run of frames whose best average
 * reaches the threshold is an event when it lasted KWS_PATIENCE_FRAMES (closed when it ends, or
 * after KWS_MAX_RUN frames); no run starts for KWS_REFRACTORY_FRAMES after an event. The event's
 * span is the loud stretch of the recent frames' levels that best overlaps the half second before
 * the model fired. _silence_ and _unknown_ never fire. */
#include <math.h>
#include <string.h>

#include "kws.h"

#define FRAME_SECONDS ((double)KWS_HOP / KWS_SAMPLE_RATE)
#define FRAME_END ((double)KWS_N_FFT / KWS_SAMPLE_RATE) /* frame i ends at i * hop + this */
#define MIN_EVENT_SECONDS 0.05
#define BRIDGE_FRAMES 15 /* gaps up to 150 ms inside a word's loud stretch are bridged */

void kws_decoder_reset(kws_decoder *d, double threshold) {
    memset(d, 0, sizeof(*d));
    d->threshold = threshold;
}

double kws_threshold_for(double per_hour) {
    int k, chosen = -1;
    if (per_hour < 0.0 || KWS_N_THRESHOLDS == 0) return KWS_DEFAULT_THRESHOLD;
    for (k = 0; k < KWS_N_THRESHOLDS; k++) /* the lowest threshold that quiet */
        if (kws_det_fa_per_hour[k] <= per_hour &&
            (chosen < 0 || kws_det_threshold[k] < kws_det_threshold[chosen]))
            chosen = k;
    if (chosen < 0) /* none is that quiet: the highest threshold */
        for (k = 0; k < KWS_N_THRESHOLDS; k++)
            if (chosen < 0 || kws_det_threshold[k] > kws_det_threshold[chosen]) chosen = k;
    return kws_det_threshold[chosen];
}

/* The k-th smallest of n levels held in the ring from frame `lo` on (np.partition's pick),
 * by counting: O(n^2) once per event, and no copy of the levels on the stack. */
static float kth_level(const kws_decoder *d, long lo, int n, int k) {
    int i, j;
    for (i = 0; i < n; i++) {
        float v = d->levels[(lo + i) % KWS_LEVEL_FRAMES];
        int less = 0, equal = 0;
        for (j = 0; j < n; j++) {
            float u = d->levels[(lo + j) % KWS_LEVEL_FRAMES];
            less += u < v;
            equal += u == v;
        }
        if (less <= k && k < less + equal) return v;
    }
    return d->levels[lo % KWS_LEVEL_FRAMES];
}

/* The span of the word the model fired on at frame `first` (see the file's notes). */
static void speech(const kws_decoder *d, long first, long last, double *start, double *end) {
    double fired = first * FRAME_SECONDS + FRAME_END, centre = FRAME_END / 2 - FRAME_SECONDS / 2;
    double lo_time = fired - 0.5 > 0.0 ? fired - 0.5 : 0.0;
    double best_overlap = 0.0, best_distance = 0.0, best_start = 0.0, best_end = 0.0;
    long held = d->frames < KWS_LEVEL_FRAMES ? d->frames : KWS_LEVEL_FRAMES;
    long oldest = d->frames - held, lo, hi, f, run_start = -1, previous = -1;
    int n = 0, found = 0;
    float floor_level, peak, mid;
    *start = lo_time;
    *end = fired;
    lo = first - KWS_LOOKBACK > oldest ? first - KWS_LOOKBACK : oldest;
    hi = last + 1 < d->frames ? last + 1 : d->frames;
    n = hi > lo ? (int)(hi - lo) : 0;
    if (n < 10) return;
    floor_level = kth_level(d, lo, n, n / 10); /* the 10th percentile */
    peak = kth_level(d, lo, n, n - 1);
    if (peak - floor_level < 6.0f) return; /* no clear speech above the background */
    mid = floor_level + 0.5f * (peak - floor_level);
    for (f = 0; f <= n; f++) { /* stretches of loud frames, small gaps bridged */
        int loud = f < n && d->levels[(lo + f) % KWS_LEVEL_FRAMES] >= mid;
        if (loud && run_start >= 0 && f - previous > BRIDGE_FRAMES + 1) loud = 2; /* a new one */
        if ((loud == 2 || f == n) && run_start >= 0) {
            double s = (lo + run_start) * FRAME_SECONDS + centre;
            double e = (lo + previous + 1) * FRAME_SECONDS + centre;
            double overlap = (e < fired ? e : fired) - (s > lo_time ? s : lo_time);
            double distance = fabs(e - fired);
            if (!found || overlap > best_overlap ||
                (overlap == best_overlap && distance <= best_distance)) {
                best_overlap = overlap, best_distance = distance, best_start = s, best_end = e;
                found = 1;
            }
            run_start = -1;
        }
        if (loud) {
            if (run_start < 0) run_start = f;
            previous = f;
        }
    }
    if (!found || best_overlap <= 0.0) return;
    *start = best_start > 0.0 ? best_start : 0.0;
    *end = best_end > *start + MIN_EVENT_SECONDS ? best_end : *start + MIN_EVENT_SECONDS;
}

static int close_run(kws_decoder *d, kws_event *event) {
    int k, keyword = -1;
    double start, end;
    if (!d->run_open) return 0;
    d->run_open = 0;
    if (d->run_last - d->run_first + 1 < KWS_PATIENCE_FRAMES) return 0;
    d->quiet_until = d->run_last + 1 + KWS_REFRACTORY_FRAMES;
    for (k = 0; k < KWS_N_CLASSES; k++)
        if (kws_is_keyword[k] && (keyword < 0 || d->peaks[k] > d->peaks[keyword])) keyword = k;
    speech(d, d->run_first, d->run_last, &start, &end);
    event->keyword = keyword;
    event->start = start;
    event->end = end;
    event->score = d->peaks[keyword];
    return 1;
}

static void open_run(kws_decoder *d, long frame) {
    d->run_open = 1;
    d->run_first = frame;
    d->run_last = frame - 1;
    memset(d->peaks, 0, sizeof(d->peaks));
}

int kws_decoder_push(kws_decoder *d, const float *posteriors, float level, kws_event *event) {
    long f = d->frames, count = f + 1 < KWS_SMOOTH_FRAMES ? f + 1 : KWS_SMOOTH_FRAMES, j;
    double smoothed[KWS_N_CLASSES], best = -1.0;
    int k, fired = 0;
    memcpy(d->ring[f % KWS_SMOOTH_FRAMES], posteriors, sizeof(float) * KWS_N_CLASSES);
    d->levels[f % KWS_LEVEL_FRAMES] = level;
    d->frames = f + 1; /* this frame's level is held from now on */
    for (k = 0; k < KWS_N_CLASSES; k++) {
        float sum = 0.0f; /* oldest first, in float: the decoder's cumulative sum */
        if (!kws_is_keyword[k]) continue;
        for (j = f - count + 1; j <= f; j++) sum += d->ring[j % KWS_SMOOTH_FRAMES][k];
        smoothed[k] = (double)sum / (double)count;
        if (smoothed[k] > best) best = smoothed[k];
    }
    if (best > d->top_score) d->top_score = best;
    if (best < d->threshold) {
        return close_run(d, event); /* the run ended with the last frame */
    }
    if (!d->run_open) {
        if (f < d->quiet_until) return 0; /* refractory after the last event */
        open_run(d, f);
    } else if (d->run_last - d->run_first + 1 >= KWS_MAX_RUN) {
        fired = close_run(d, event); /* long enough: decided now, bounding the latency */
        if (f < d->quiet_until) return fired;
        open_run(d, f);
    }
    d->run_last = f;
    for (k = 0; k < KWS_N_CLASSES; k++)
        if (kws_is_keyword[k] && smoothed[k] > d->peaks[k]) d->peaks[k] = smoothed[k];
    return fired;
}

int kws_decoder_flush(kws_decoder *d, kws_event *event) { return close_run(d, event); }
