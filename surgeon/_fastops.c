/*
 * surgeon's fused measurement kernels, an onnxruntime custom-op library (domain
 * "ai.surgeon"): one pass over a tensor where the equivalent ONNX nodes take about a
 * dozen, each materialising a float64 copy of the activation.
 *
 *   TensorStats(x) -> numbers: double[7], shape: int64[rank]
 *       min, max (both ignoring NaN), mean, sum of squared deviations from the mean,
 *       zero count, NaN count, Inf count; x float16, bfloat16, float32 or float64.
 *
 *   ComparePair(actual, expected, tolerance: double[2] = (atol, rtol))
 *       -> numbers: double[14], shape: int64[rank], reference_shape: int64[rank]
 *       The twelve numbers of surgeon.compare.in_graph's comparison nodes (nan,
 *       reference_nan, inf, reference_inf, mismatches, finite, nonzero, max_abs,
 *       max_rel, dot, norm, reference_norm), then the severity numbers (excess, born).
 *       actual and expected are float16 or float32; actual is rounded to expected's
 *       dtype first, as compare_arrays casts it (severity reads actual as it is).
 *
 *   MeasurePair(actual, expected, tolerance) -> ComparePair's outputs, then TensorStats'
 *       numbers of actual, from one read of the pair (debug --ref measures and compares
 *       every candidate tensor).
 *
 *   Stored(x: float16) -> float16, a copy of x: the tensor as onnxruntime stores it.
 *       onnxruntime's CPU runs float16 nodes that lack a float16 kernel in float32 and
 *       drops the Cast pairs between them, so the next node would read unrounded values;
 *       it cannot see through this node, which reads the stored (rounded) tensor.
 *
 *   Attributes: severity (ComparePair, MeasurePair; default 1) computes the severity
 *   numbers; counts (ComparePair; default 0) gives the four NaN/Inf counts alone, each
 *   side in its own dtype, from the bits (the rest NaN); threads (default 0: one per
 *   core, at most 4) for tensors above 2**16.
 *
 * Every per-element step is the IEEE float64 operation the ONNX nodes perform (built
 * with -ffp-contract=off: no fused multiply-add), so counts and extremes are identical;
 * sums are pairwise (as numpy's), so they differ from onnxruntime's in the last bits only.
 *
 * No onnxruntime header ships with its Python wheel: the few entries of the C API used
 * here are declared below by their position in the OrtApi table of API version 13 (the
 * table is append-only, so later onnxruntime versions keep these positions).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define SURGEON_EXPORT __declspec(dllexport)
#else
#define SURGEON_EXPORT __attribute__((visibility("default")))
#endif

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtTensorTypeAndShapeInfo OrtTypeShape;

typedef struct OrtApiBase {
    const void *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum { API_VERSION = 13 };

/* ONNXTensorElementDataType values (those of onnx.TensorProto). */
enum { T_UNDEFINED = 0, T_FLOAT = 1, T_INT64 = 7, T_FLOAT16 = 10, T_DOUBLE = 11, T_BFLOAT16 = 16 };

/* Positions in the OrtApi table. */
enum {
    API_CreateStatus = 0,
    API_CreateCustomOpDomain = 26,
    API_CustomOpDomain_Add = 27,
    API_AddCustomOpDomain = 28,
    API_GetTensorMutableData = 51,
    API_GetTensorElementType = 60,
    API_GetDimensionsCount = 61,
    API_GetDimensions = 62,
    API_GetTensorShapeElementCount = 64,
    API_GetTensorTypeAndShape = 65,
    API_KernelInfoGetAttribute_int64 = 86,
    API_KernelContext_GetInput = 90,
    API_KernelContext_GetOutput = 91,
    API_ReleaseStatus = 93,
    API_ReleaseTensorTypeAndShapeInfo = 99,
};

typedef void *const *Api;

#define CALL(api, slot, type) ((type)(api)[slot])

typedef struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct OrtCustomOp *op, const void *api, const OrtKernelInfo *info);
    const char *(*GetName)(const struct OrtCustomOp *op);
    const char *(*GetExecutionProviderType)(const struct OrtCustomOp *op);
    int (*GetInputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const struct OrtCustomOp *op);
    int (*GetOutputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const struct OrtCustomOp *op);
    void (*KernelCompute)(void *kernel, OrtKernelContext *context);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int (*GetOutputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int (*GetInputMemoryType)(const struct OrtCustomOp *op, size_t index);
} OrtCustomOp;

/* ---- element access -------------------------------------------------------------- */

static double half_to_double(uint16_t h) {
    int exponent = (h >> 10) & 0x1f;
    double mantissa = (double)(h & 0x3ff);
    double magnitude;
    if (exponent == 0x1f) {
        magnitude = (h & 0x3ff) ? NAN : INFINITY;
    } else if (exponent == 0) {
        magnitude = ldexp(mantissa, -24);
    } else {
        magnitude = ldexp(mantissa + 1024.0, exponent - 25);
    }
    return (h & 0x8000) ? -magnitude : magnitude;
}

static double bfloat_to_double(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

/* float32 -> float16, rounding to nearest even (overflow to Inf, NaN stays NaN). */
static uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mantissa = x & 0x7fffffu;
    int exponent = (int)((x >> 23) & 0xffu);
    if (exponent == 0xff) {
        return (uint16_t)(sign | 0x7c00u | (mantissa ? 0x200u : 0u));
    }
    int e = exponent - 127 + 15;
    if (e >= 0x1f) {
        return (uint16_t)(sign | 0x7c00u);
    }
    if (e <= 0) {
        if (e < -10) {
            return (uint16_t)sign;
        }
        uint32_t full = mantissa | 0x800000u;
        int shift = 14 - e;
        uint32_t kept = full >> shift;
        uint32_t rest = full & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (kept & 1u))) {
            kept++;
        }
        return (uint16_t)(sign | kept);
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (mantissa >> 13);
    uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) {
        h++; /* a carry into the exponent gives the next binade, or Inf */
    }
    return (uint16_t)h;
}

typedef struct {
    const void *data;
    int type;
} Source;

static inline double load(Source s, size_t i) {
    switch (s.type) {
    case T_FLOAT:
        return (double)((const float *)s.data)[i];
    case T_DOUBLE:
        return ((const double *)s.data)[i];
    case T_FLOAT16:
        return half_to_double(((const uint16_t *)s.data)[i]);
    default:
        return bfloat_to_double(((const uint16_t *)s.data)[i]);
    }
}

/* actual's element i as expected's dtype holds it (the cast compare_arrays makes) */
static inline double load_as(Source s, int as_type, size_t i) {
    if (s.type == T_FLOAT && as_type == T_FLOAT16) {
        return half_to_double(float_to_half(((const float *)s.data)[i]));
    }
    return load(s, i);
}

/* ---- pairwise sums ----------------------------------------------------------------- */

/* Sums are accumulated per block of BLOCK elements and the block sums combined pairwise
 * (a binary counter of partial sums): the error grows with log2(n / BLOCK), as numpy's. */
enum { BLOCK = 128, LEVELS = 64 };

typedef struct {
    double partial[LEVELS];
    uint64_t filled; /* bit k: partial[k] holds the sum of 2**k blocks */
} Pairwise;

static void pairwise_add(Pairwise *p, double block) {
    int k = 0;
    while (p->filled & (1ull << k)) {
        block += p->partial[k];
        p->filled &= ~(1ull << k);
        k++;
    }
    p->partial[k] = block;
    p->filled |= 1ull << k;
}

static double pairwise_total(const Pairwise *p) {
    double total = 0.0;
    for (int k = 0; k < LEVELS; k++) {
        if (p->filled & (1ull << k)) {
            total += p->partial[k];
        }
    }
    return total;
}

/* ---- typed loads (branch-free, so loops over them vectorise) --------------------------- */

static inline double load_f32(const void *p, size_t i) { return (double)((const float *)p)[i]; }

static inline double load_f64(const void *p, size_t i) { return ((const double *)p)[i]; }

static inline double bits_to_double(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

/* float16 -> float32 bits, exact: a normal half is rebiased in the integers, a subnormal
 * one (m * 2**-24) converted from its integer mantissa; no float arithmetic on
 * subnormals, so a denormals-are-zero mode cannot change it. */
static inline double load_f16(const void *p, size_t i) {
    uint16_t h = ((const uint16_t *)p)[i];
    uint32_t rest = h & 0x7fffu;
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t normal = (rest << 13) + (112u << 23);
    uint32_t special = 0x7f800000u | ((rest & 0x3ffu) << 13);
    uint32_t bits = (rest >= 0x7c00u ? special : normal) | sign;
    double subnormal = (double)rest * 0x1p-24;
    return rest < 0x400u ? (h & 0x8000u ? -subnormal : subnormal) : bits_to_double(bits);
}

static inline double load_bf16(const void *p, size_t i) {
    return bits_to_double((uint32_t)((const uint16_t *)p)[i] << 16);
}

/* ---- vectors of four doubles ------------------------------------------------------------ */

/* The fast loops keep LANES = 8 accumulators as two vectors of four doubles (GCC and
 * clang vector extensions): each lane does the same IEEE float64 operations, in the same
 * order, as the scalar steps it stands for, so the numbers do not depend on the vector
 * width. Built for the baseline x86-64 (SSE2) a vector is two registers; on glibc x86-64
 * the loops are also built for AVX2 and picked at load time (target_clones), which
 * halves their time (no FMA: -ffp-contract=off holds in the clones too). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* the helpers taking vectors are inlined */
#endif
typedef double Vd __attribute__((vector_size(32)));
typedef int64_t Vi __attribute__((vector_size(32)));
/* four 32-bit lanes: float16 bits widened to float32 bits */
typedef uint32_t Vu __attribute__((vector_size(16)));
typedef int32_t Vs __attribute__((vector_size(16)));
typedef float Vf __attribute__((vector_size(16)));
typedef uint16_t Vh __attribute__((vector_size(8)));

/* (-DSURGEON_NO_VECTOR_CLONES builds the baseline loops alone, to test them on AVX2 machines) */
#if defined(__x86_64__) && defined(__GLIBC__) && !defined(__clang__) && !defined(SURGEON_NO_VECTOR_CLONES)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* always_inline: inlined before the vector code is lowered, so in the AVX2 clones too
 * they compile to AVX2 instructions */
#define INLINE inline __attribute__((always_inline))

static INLINE Vd splat(double v) { return (Vd){v, v, v, v}; }

/* mask ? a : b, lane by lane (mask lanes all ones or all zeros) */
static INLINE Vd vector_select(Vi mask, Vd a, Vd b) { return (Vd)(((Vi)a & mask) | ((Vi)b & ~mask)); }

/* v < low ? v : low and v > high ? v : high, as the scalar steps (a NaN v is skipped) */
static INLINE Vd vector_min(Vd v, Vd low) { return vector_select((Vi)(v < low), v, low); }
static INLINE Vd vector_max(Vd v, Vd high) { return vector_select((Vi)(v > high), v, high); }

/* any lane of mask set */
static INLINE int vector_any(Vi mask) { return (mask[0] | mask[1] | mask[2] | mask[3]) != 0; }

static INLINE Vd vector_abs(Vd v) {
    const Vi magnitude_bits = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
    return (Vd)((Vi)v & magnitude_bits);
}

/* The sum of the eight lanes held in two vectors, lanes 0-3 and 4-7. */
static INLINE double vector_total(Vd low_lanes, Vd high_lanes) {
    return ((low_lanes[0] + low_lanes[1]) + (low_lanes[2] + low_lanes[3])) +
           ((high_lanes[0] + high_lanes[1]) + (high_lanes[2] + high_lanes[3]));
}

static INLINE Vd load_f32_vector(const void *p, size_t i) {
    const float *f = (const float *)p + i;
    return (Vd){f[0], f[1], f[2], f[3]};
}

static INLINE Vd load_f64_vector(const void *p, size_t i) {
    Vd four;
    memcpy(&four, (const double *)p + i, sizeof four);
    return four;
}

/* load_f16 on four halves at once, without branches: the same bits, in 32-bit lanes
 * (a subnormal half, m * 2**-24, is m converted to float and scaled: exact, as m <
 * 2**10), then widened to double as load_f16's (double)float does. */
static INLINE Vd load_f16_vector(const void *p, size_t i) {
    Vh halves;
    memcpy(&halves, (const uint16_t *)p + i, sizeof halves);
    const Vu widened = __builtin_convertvector(halves, Vu);
    const Vu rest = widened & 0x7fffu;
    const Vu sign = (widened & 0x8000u) << 16;
    const Vu normal = (rest << 13) + (112u << 23);
    const Vu special = 0x7f800000u | ((rest & 0x3ffu) << 13);
    const Vu is_special = (Vu)(rest >= 0x7c00u), is_subnormal = (Vu)(rest < 0x400u);
    const Vf subnormal = __builtin_convertvector((Vs)rest, Vf) * 0x1p-24f;
    const Vu bits = (((Vu)subnormal & is_subnormal) |
                     (((special & is_special) | (normal & ~is_special)) & ~is_subnormal)) |
                    sign;
    const Vf f = (Vf)bits;
    return (Vd){f[0], f[1], f[2], f[3]};
}

static INLINE Vd load_bf16_vector(const void *p, size_t i) {
    return (Vd){load_bf16(p, i), load_bf16(p, i + 1), load_bf16(p, i + 2), load_bf16(p, i + 3)};
}

/* ---- work split over threads --------------------------------------------------------- */

/* Large tensors are cut into spans of SPAN elements, each measured on its own (its sums
 * pairwise over its blocks) and the spans combined in their order: the numbers do not
 * depend on how many threads ran them. */
enum { SPAN = 1 << 16, MAX_THREADS = 8 };

typedef void (*SpanFn)(void *job, size_t span);

#if defined(_WIN32)
static int cpu_count(void) { return 1; }

static void for_spans(SpanFn fn, void *job, size_t spans, int threads) {
    (void)threads;
    for (size_t k = 0; k < spans; k++) fn(job, k);
}
#else
#include <pthread.h>
#include <unistd.h>

static int cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 4 ? 4 : (int)n;
}

typedef struct {
    SpanFn fn;
    void *job;
    size_t spans, first, stride;
} Worker;

static void *work(void *arg) {
    Worker *w = (Worker *)arg;
    for (size_t k = w->first; k < w->spans; k += w->stride) w->fn(w->job, k);
    return NULL;
}

static void for_spans(SpanFn fn, void *job, size_t spans, int threads) {
    if ((size_t)threads > spans) threads = (int)spans;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    Worker workers[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        workers[t].fn = fn;
        workers[t].job = job;
        workers[t].spans = spans;
        workers[t].first = (size_t)t;
        workers[t].stride = (size_t)threads;
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, work, &workers[t]) == 0;
    work(&workers[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) {
            pthread_join(ids[t], NULL);
        } else {
            work(&workers[t]); /* no thread: its spans run here */
        }
    }
}
#endif

/* ---- shared kernel plumbing --------------------------------------------------------- */

typedef struct {
    Api api;
    int threads;  /* 0: one per core (at most 4) */
    int severity; /* ComparePair: compute the severity numbers */
    int counts;   /* ComparePair: the NaN and Inf counts alone */
} Kernel;

typedef struct {
    const OrtValue *value;
    Source source;
    size_t count;
    size_t rank;
    int64_t dims[16];
    int64_t *wide; /* the dims of a tensor of rank above 16 (freed by drop_input) */
    int ok;
} Input;

static const int64_t *dims_of(const Input *in) { return in->rank > 16 ? in->wide : in->dims; }

static void drop_input(Input *in) {
    free(in->wide);
    in->wide = NULL;
}

static void release(Api api, OrtStatus *status) {
    if (status) CALL(api, API_ReleaseStatus, void (*)(OrtStatus *))(status);
}

static Input read_input(Api api, OrtKernelContext *context, size_t index) {
    Input in;
    memset(&in, 0, sizeof in);
    OrtStatus *status =
        CALL(api, API_KernelContext_GetInput, OrtStatus *(*)(OrtKernelContext *, size_t, const OrtValue **))(
            context, index, &in.value);
    if (status || !in.value) {
        release(api, status);
        return in;
    }
    OrtTypeShape *info = NULL;
    status = CALL(api, API_GetTensorTypeAndShape, OrtStatus *(*)(const OrtValue *, OrtTypeShape **))(in.value, &info);
    if (status) {
        release(api, status);
        return in;
    }
    int type = 0;
    size_t rank = 0, count = 0;
    int bad = 0;
    OrtStatus *s1 = CALL(api, API_GetTensorElementType, OrtStatus *(*)(const OrtTypeShape *, int *))(info, &type);
    OrtStatus *s2 = CALL(api, API_GetDimensionsCount, OrtStatus *(*)(const OrtTypeShape *, size_t *))(info, &rank);
    bad = s1 != NULL || s2 != NULL;
    if (!bad && rank > 16) {
        in.wide = (int64_t *)malloc(rank * sizeof *in.wide);
        bad = in.wide == NULL;
    }
    release(api, s1);
    release(api, s2);
    if (!bad) {
        s1 = CALL(api, API_GetDimensions, OrtStatus *(*)(const OrtTypeShape *, int64_t *, size_t))(info, rank > 16 ? in.wide : in.dims, rank);
        s2 = CALL(api, API_GetTensorShapeElementCount, OrtStatus *(*)(const OrtTypeShape *, size_t *))(info, &count);
        bad = s1 != NULL || s2 != NULL;
        release(api, s1);
        release(api, s2);
    }
    CALL(api, API_ReleaseTensorTypeAndShapeInfo, void (*)(OrtTypeShape *))(info);
    void *data = NULL;
    if (!bad && count) {
        s1 = CALL(api, API_GetTensorMutableData, OrtStatus *(*)(OrtValue *, void **))((OrtValue *)in.value, &data);
        bad = s1 != NULL;
        release(api, s1);
    }
    if (bad) {
        drop_input(&in);
        return in;
    }
    in.source.data = data;
    in.source.type = type;
    in.count = count;
    in.rank = rank;
    in.ok = type == T_FLOAT || type == T_DOUBLE || type == T_FLOAT16 || type == T_BFLOAT16;
    return in;
}

static void *output(Api api, OrtKernelContext *context, size_t index, const int64_t *dims, size_t rank) {
    OrtValue *value = NULL;
    OrtStatus *status = CALL(api, API_KernelContext_GetOutput,
                             OrtStatus *(*)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **))(
        context, index, dims, rank, &value);
    if (status || !value) {
        release(api, status);
        return NULL;
    }
    void *data = NULL;
    status = CALL(api, API_GetTensorMutableData, OrtStatus *(*)(OrtValue *, void **))(value, &data);
    if (status) {
        release(api, status);
        return NULL;
    }
    return data;
}

static void write_shape(Api api, OrtKernelContext *context, size_t index, const Input *in) {
    int64_t rank = (int64_t)in->rank;
    int64_t *shape = (int64_t *)output(api, context, index, &rank, 1);
    if (shape) {
        for (size_t k = 0; k < in->rank; k++) {
            shape[k] = dims_of(in)[k];
        }
    }
}

static int64_t int_attribute(Api api, const OrtKernelInfo *info, const char *name, int64_t fallback) {
    int64_t value = 0;
    OrtStatus *status =
        CALL(api, API_KernelInfoGetAttribute_int64, OrtStatus *(*)(const OrtKernelInfo *, const char *, int64_t *))(
            info, name, &value);
    if (status) {
        release(api, status);
        return fallback;
    }
    return value;
}

static void *create_kernel(const OrtCustomOp *op, const void *api_table, const OrtKernelInfo *info) {
    (void)op;
    Api api = (Api)api_table;
    Kernel *kernel = (Kernel *)malloc(sizeof *kernel);
    if (!kernel) return NULL;
    kernel->api = api;
    int64_t threads = int_attribute(api, info, "threads", 0);
    kernel->threads = threads > 0 && threads <= MAX_THREADS ? (int)threads : cpu_count();
    kernel->severity = int_attribute(api, info, "severity", 1) != 0;
    kernel->counts = int_attribute(api, info, "counts", 0) != 0;
    return kernel;
}

static void destroy_kernel(void *kernel) { free(kernel); }

static const char *cpu_provider(const OrtCustomOp *op) {
    (void)op;
    return NULL;
}

static int required(const OrtCustomOp *op, size_t index) {
    (void)op;
    (void)index;
    return 0; /* INPUT_OUTPUT_REQUIRED */
}

static int default_memory(const OrtCustomOp *op, size_t index) {
    (void)op;
    (void)index;
    return 0; /* OrtMemTypeDefault */
}

static size_t span_count(size_t count) { return (count + SPAN - 1) / SPAN; }

/* Inner loops keep LANES independent accumulators (numpy's pairwise sum does the same),
 * as two vectors of four (see "vectors of four doubles"); a block's sum is the sum of its
 * lanes (vector_total). */
enum { LANES = 8 };

/* ---- TensorStats --------------------------------------------------------------------- */

/* The fast pass assumes finite values: the float64 sum of the tensor is then finite, and
 * a finite sum proves them finite (a NaN or Inf makes it NaN or Inf). Otherwise the
 * general pass below counts NaN and Inf.
 *
 * One read of the tensor: each block of BLOCK elements is summed, then (still in the
 * cache) its squared deviations from its own mean m_b are summed, and those deviations
 * too (L_b, zero but for m_b's rounding). The tensor's sum of squared deviations is then
 * exactly sum_b [M2_b + 2 (m_b - mean) L_b + n_b (m_b - mean)^2], with the block means
 * and L_b kept: no cancellation, as numpy's two-pass form (L_b matters for float64
 * tensors far from zero, whose block means are not exact: 1e10 + U(0, 1) lost three
 * digits of its std without it; review). */
typedef struct {
    double low, high, sum, within;
    int64_t zeros;
} StatsPart;

typedef struct {
    const void *x;
    size_t count;
    StatsPart *parts;
    double *block_means; /* one per block of BLOCK elements (the last may be shorter) */
    double *block_lins;  /* each block's sum of deviations from its own mean (L_b) */
} StatsJob;

#define DEFINE_STATS(SUFFIX, LOAD)                                                                  \
    static VECTOR_CLONES void stats_##SUFFIX(void *arg, size_t k) {                                 \
        StatsJob *job = (StatsJob *)arg;                                                            \
        size_t lo = k * SPAN, hi = lo + SPAN < job->count ? lo + SPAN : job->count;                 \
        /* extremes and counts do not depend on the order: one vector each for all lanes */      \
        Vd low = splat(INFINITY), high = splat(-INFINITY);                                          \
        Vi zeros = {0, 0, 0, 0};                                                                    \
        const Vd zero = splat(0.0);                                                                 \
        Pairwise sum, within;                                                                       \
        memset(&sum, 0, sizeof sum);                                                                \
        memset(&within, 0, sizeof within);                                                          \
        size_t whole = lo + (hi - lo) / BLOCK * BLOCK;                                              \
        for (size_t start = lo; start < whole; start += BLOCK) {                                    \
            /* sums: lanes 0-3 in the vectors ending in 0, lanes 4-7 in those ending in 1 */    \
            Vd acc0 = zero, acc1 = zero;                                                            \
            for (size_t i = start; i < start + BLOCK; i += LANES) {                                 \
                Vd v0 = LOAD##_vector(job->x, i), v1 = LOAD##_vector(job->x, i + 4);                \
                acc0 += v0;                                                                         \
                acc1 += v1;                                                                         \
                low = vector_min(v1, vector_min(v0, low));                                          \
                high = vector_max(v1, vector_max(v0, high));                                        \
                zeros -= (Vi)(v0 == zero);                                                          \
                zeros -= (Vi)(v1 == zero);                                                          \
            }                                                                                       \
            double block_sum = vector_total(acc0, acc1);                                            \
            double block_mean = block_sum / (double)BLOCK;                                          \
            const Vd mean = splat(block_mean);                                                      \
            Vd sq0 = zero, sq1 = zero, lin0 = zero, lin1 = zero;                                    \
            for (size_t i = start; i < start + BLOCK; i += LANES) {                                 \
                Vd c0 = LOAD##_vector(job->x, i) - mean, c1 = LOAD##_vector(job->x, i + 4) - mean;  \
                sq0 += c0 * c0;                                                                     \
                sq1 += c1 * c1;                                                                     \
                lin0 += c0;                                                                         \
                lin1 += c1;                                                                         \
            }                                                                                       \
            pairwise_add(&sum, block_sum);                                                          \
            pairwise_add(&within, vector_total(sq0, sq1));                                          \
            job->block_means[start / BLOCK] = block_mean;                                           \
            job->block_lins[start / BLOCK] = vector_total(lin0, lin1);                              \
        }                                                                                           \
        if (whole < hi) {                                                                           \
            double rest = 0.0;                                                                      \
            for (size_t i = whole; i < hi; i++) {                                                   \
                double v = LOAD(job->x, i);                                                         \
                rest += v;                                                                          \
                low[0] = v < low[0] ? v : low[0];                                                   \
                high[0] = v > high[0] ? v : high[0];                                                \
                zeros[0] += v == 0.0;                                                               \
            }                                                                                       \
            double rest_mean = rest / (double)(hi - whole), rest_sq = 0.0, rest_lin = 0.0;          \
            for (size_t i = whole; i < hi; i++) {                                                   \
                double centered = LOAD(job->x, i) - rest_mean;                                      \
                rest_sq += centered * centered;                                                     \
                rest_lin += centered;                                                               \
            }                                                                                       \
            pairwise_add(&sum, rest);                                                               \
            pairwise_add(&within, rest_sq);                                                         \
            job->block_means[whole / BLOCK] = rest_mean;                                            \
            job->block_lins[whole / BLOCK] = rest_lin;                                              \
        }                                                                                           \
        StatsPart *part = &job->parts[k];                                                           \
        part->low = INFINITY;                                                                       \
        part->high = -INFINITY;                                                                     \
        part->zeros = 0;                                                                            \
        for (int j = 0; j < 4; j++) {                                                               \
            part->low = low[j] < part->low ? low[j] : part->low;                                    \
            part->high = high[j] > part->high ? high[j] : part->high;                               \
            part->zeros += zeros[j];                                                                \
        }                                                                                           \
        part->sum = pairwise_total(&sum);                                                           \
        part->within = pairwise_total(&within);                                                     \
    }

DEFINE_STATS(f32, load_f32)
DEFINE_STATS(f64, load_f64)
DEFINE_STATS(f16, load_f16)
DEFINE_STATS(bf16, load_bf16)

/* A fast statistics pass in three steps (so MeasurePair can run it span by span beside
 * a comparison): stats_begin picks the loop and allocates, spans run it, stats_end
 * combines the spans; stats_end gives 0 when the values were not all finite. */
typedef struct {
    StatsJob job;
    SpanFn fn;
    size_t spans, blocks;
} StatsRun;

static int stats_begin(const Input *x, StatsRun *run) {
    memset(run, 0, sizeof *run);
    if (!x->count) return 0;
    switch (x->source.type) {
    case T_FLOAT: run->fn = stats_f32; break;
    case T_DOUBLE: run->fn = stats_f64; break;
    case T_FLOAT16: run->fn = stats_f16; break;
    default: run->fn = stats_bf16; break;
    }
    run->spans = span_count(x->count);
    run->blocks = (x->count + BLOCK - 1) / BLOCK;
    run->job.x = x->source.data;
    run->job.count = x->count;
    run->job.parts = (StatsPart *)malloc(run->spans * sizeof *run->job.parts);
    run->job.block_means = (double *)malloc(run->blocks * sizeof *run->job.block_means);
    run->job.block_lins = (double *)malloc(run->blocks * sizeof *run->job.block_lins);
    if (!run->job.parts || !run->job.block_means || !run->job.block_lins) {
        free(run->job.parts);
        free(run->job.block_means);
        free(run->job.block_lins);
        return 0;
    }
    return 1;
}

static int stats_end(StatsRun *run, double *numbers) {
    StatsPart *parts = run->job.parts;
    size_t count = run->job.count;
    Pairwise sum, within;
    memset(&sum, 0, sizeof sum);
    memset(&within, 0, sizeof within);
    double low = INFINITY, high = -INFINITY;
    int64_t zeros = 0;
    for (size_t k = 0; k < run->spans; k++) {
        pairwise_add(&sum, parts[k].sum);
        pairwise_add(&within, parts[k].within);
        low = parts[k].low < low ? parts[k].low : low;
        high = parts[k].high > high ? parts[k].high : high;
        zeros += parts[k].zeros;
    }
    free(parts);
    double total = pairwise_total(&sum);
    if (!isfinite(total)) {
        free(run->job.block_means);
        free(run->job.block_lins);
        return 0;
    }
    double mean = total / (double)count;
    /* the blocks' means around the tensor's, weighted by their sizes */
    Pairwise between;
    memset(&between, 0, sizeof between);
    for (size_t b = 0; b < run->blocks; b++) {
        double n = b + 1 < run->blocks || count % BLOCK == 0 ? (double)BLOCK : (double)(count % BLOCK);
        double d = run->job.block_means[b] - mean;
        pairwise_add(&between, n * d * d + 2.0 * d * run->job.block_lins[b]);
    }
    free(run->job.block_means);
    free(run->job.block_lins);
    numbers[0] = low;
    numbers[1] = high;
    numbers[2] = mean;
    numbers[3] = pairwise_total(&within) + pairwise_total(&between);
    numbers[4] = (double)zeros;
    numbers[5] = 0;
    numbers[6] = 0;
    return 1;
}

/* The general pass (a NaN or Inf somewhere, or an empty tensor): one thread. */
static void stats_general(const Input *x, double *numbers) {
    double low = INFINITY, high = -INFINITY;
    double zeros = 0, nans = 0, infs = 0;
    Pairwise sum;
    memset(&sum, 0, sizeof sum);
    for (size_t start = 0; start < x->count; start += BLOCK) {
        size_t end = start + BLOCK < x->count ? start + BLOCK : x->count;
        double block = 0.0;
        for (size_t i = start; i < end; i++) {
            double v = load(x->source, i);
            block += v;
            if (v < low) low = v;
            if (v > high) high = v;
            zeros += v == 0.0;
            nans += v != v;
            infs += isinf(v) != 0;
        }
        pairwise_add(&sum, block);
    }
    double mean = pairwise_total(&sum) / (double)x->count;
    Pairwise squares;
    memset(&squares, 0, sizeof squares);
    for (size_t start = 0; start < x->count; start += BLOCK) {
        size_t end = start + BLOCK < x->count ? start + BLOCK : x->count;
        double block = 0.0;
        for (size_t i = start; i < end; i++) {
            double centered = load(x->source, i) - mean;
            block += centered * centered;
        }
        pairwise_add(&squares, block);
    }
    numbers[0] = low;
    numbers[1] = high;
    numbers[2] = mean;
    numbers[3] = pairwise_total(&squares);
    numbers[4] = zeros;
    numbers[5] = nans;
    numbers[6] = infs;
}

/* The statistics of ``x`` into numbers[0..6] (NaN for a dtype the kernel does not read). */
static void measure_tensor(const Input *x, int threads, double *numbers) {
    for (int j = 0; j < 7; j++) numbers[j] = NAN;
    if (!x->ok && x->count) return;
    StatsRun run;
    if (stats_begin(x, &run)) {
        for_spans(run.fn, &run.job, run.spans, threads);
        if (stats_end(&run, numbers)) return;
    }
    stats_general(x, numbers);
}

static void stats_compute(void *kernel, OrtKernelContext *context) {
    Kernel *k = (Kernel *)kernel;
    Api api = k->api;
    Input x = read_input(api, context, 0);
    int64_t seven = 7;
    double *numbers = (double *)output(api, context, 0, &seven, 1);
    write_shape(api, context, 1, &x);
    if (numbers) measure_tensor(&x, k->threads, numbers);
    drop_input(&x);
}

static const char *stats_name(const OrtCustomOp *op) {
    (void)op;
    return "TensorStats";
}
static int stats_input_type(const OrtCustomOp *op, size_t index) {
    (void)op;
    (void)index;
    return T_UNDEFINED; /* any tensor type; the kernel reads the floats */
}
static size_t stats_input_count(const OrtCustomOp *op) {
    (void)op;
    return 1;
}
static int stats_output_type(const OrtCustomOp *op, size_t index) {
    (void)op;
    return index == 0 ? T_DOUBLE : T_INT64;
}
static size_t stats_output_count(const OrtCustomOp *op) {
    (void)op;
    return 2;
}

/* ---- ComparePair ---------------------------------------------------------------------- */

/* The fast pass: both sides assumed finite, of equal sizes, and the candidate's values
 * exact in the reference's dtype (float32/float32, float16/float16, float16/float32),
 * so it is its own "raw" value for the severity. Finite sums of squares prove the
 * values finite afterwards (a float32 value squared cannot overflow float64); otherwise
 * the general pass below runs. */
typedef struct {
    int64_t mismatches, nonzero;
    double max_abs, max_rel, excess, dot, norm, reference_norm;
} ComparePart;

typedef struct {
    const void *a, *e;
    size_t count;
    double atol, rtol;
    ComparePart *parts;
} CompareJob;

#define DEFINE_COMPARE(SUFFIX, LOAD_A, LOAD_E, SEVERITY)                                            \
    static VECTOR_CLONES void compare_##SUFFIX(void *arg, size_t k) {                               \
        CompareJob *job = (CompareJob *)arg;                                                        \
        size_t lo = k * SPAN, hi = lo + SPAN < job->count ? lo + SPAN : job->count;                 \
        const double atol = job->atol, rtol = job->rtol;                                            \
        const Vd zero = splat(0.0), infinity = splat(INFINITY), atols = splat(atol);                \
        const Vd rtols = splat(rtol);                                                               \
        /* extremes and counts do not depend on the order: one vector each for all lanes */      \
        Vd max_abs = zero, max_rel = zero, excess = zero;                                           \
        Vi mismatches = {0, 0, 0, 0}, nonzero = mismatches;                                         \
        Pairwise dot, norm, reference_norm;                                                         \
        memset(&dot, 0, sizeof dot);                                                                \
        memset(&norm, 0, sizeof norm);                                                              \
        memset(&reference_norm, 0, sizeof reference_norm);                                          \
        for (size_t start = lo; start < hi; start += BLOCK) {                                       \
            size_t end = start + BLOCK < hi ? start + BLOCK : hi;                                   \
            /* sums: lanes 0-3 in the vectors ending in 0, lanes 4-7 in those ending in 1 */    \
            Vd d0 = zero, d1 = zero, q0 = zero, q1 = zero, r0 = zero, r1 = zero;                    \
            size_t i = start;                                                                       \
            for (; i + LANES <= end; i += LANES) {                                                  \
                COMPARE_VECTOR_STEP(LOAD_A, LOAD_E, SEVERITY, i, 0)                                 \
                COMPARE_VECTOR_STEP(LOAD_A, LOAD_E, SEVERITY, i + 4, 1)                             \
            }                                                                                       \
            for (; i < end; i++) { /* the tensor's last elements, into lane 0 */                   \
                COMPARE_STEP(LOAD_A, LOAD_E, SEVERITY, i)                                           \
            }                                                                                       \
            pairwise_add(&dot, vector_total(d0, d1));                                               \
            pairwise_add(&norm, vector_total(q0, q1));                                              \
            pairwise_add(&reference_norm, vector_total(r0, r1));                                    \
        }                                                                                           \
        ComparePart *part = &job->parts[k];                                                         \
        memset(part, 0, sizeof *part);                                                              \
        for (int j = 0; j < 4; j++) {                                                               \
            part->max_abs = max_abs[j] > part->max_abs ? max_abs[j] : part->max_abs;                \
            part->max_rel = max_rel[j] > part->max_rel ? max_rel[j] : part->max_rel;                \
            part->excess = excess[j] > part->excess ? excess[j] : part->excess;                     \
            part->mismatches += mismatches[j];                                                      \
            part->nonzero += nonzero[j];                                                            \
        }                                                                                           \
        part->dot = pairwise_total(&dot);                                                           \
        part->norm = pairwise_total(&norm);                                                         \
        part->reference_norm = pairwise_total(&reference_norm);                                     \
    }

/* Four elements (lanes 4L..4L+3): the float64 steps of surgeon.compare.in_graph's nodes,
 * in their order, as COMPARE_STEP below takes them one by one.
 *
 * The two divisions (max_rel's and the severity's excess) bound the loop's speed, and
 * only a quotient above its lane's maximum M matters, so they are made only for four
 * elements one of which may give one. The test is exact, never a miss: rounding is
 * monotonic, so fl(d / q) > M implies d / q > M, so d > M * q, so fl(M * q) <= d (d is
 * a double). A zero difference is skipped (its quotient, 0 or NaN, never exceeds M >= 0),
 * so equal tensors make no division at all. */
#define COMPARE_VECTOR_STEP(LOAD_A, LOAD_E, SEVERITY, I, L)                                         \
    {                                                                                               \
        Vd x = LOAD_A##_vector(job->a, (I)), y = LOAD_E##_vector(job->e, (I));                      \
        Vd diff = vector_abs(x - y);                                                                \
        Vd magnitude = vector_abs(y);                                                               \
        Vd limit = magnitude * rtols + atols;                                                       \
        mismatches -= (Vi)(diff > limit) & (Vi)(x != y);                                            \
        max_abs = vector_max(diff, max_abs);                                                        \
        Vi reference_nonzero = (Vi)(y != zero);                                                     \
        nonzero -= reference_nonzero;                                                               \
        /* |d| / inf = 0 where the reference is 0: left out of max_rel */                          \
        Vd divisor = vector_select(reference_nonzero, magnitude, infinity);                         \
        Vi positive = (Vi)(diff > zero);                                                            \
        if (vector_any((Vi)(diff >= max_rel * divisor) & positive)) {                               \
            max_rel = vector_max(diff / divisor, max_rel);                                          \
        }                                                                                           \
        if (SEVERITY && vector_any((Vi)(diff >= excess * limit) & positive)) {                      \
            excess = vector_max(diff / limit, excess);                                              \
        }                                                                                           \
        d##L += x * y;                                                                              \
        q##L += x * x;                                                                              \
        r##L += y * y;                                                                              \
    }

/* One element, into lane 0 (its sums) and the shared extremes and counts. */
#define COMPARE_STEP(LOAD_A, LOAD_E, SEVERITY, I)                                                   \
    {                                                                                               \
        double x = LOAD_A(job->a, (I)), y = LOAD_E(job->e, (I));                                    \
        double diff = fabs(x - y);                                                                  \
        double magnitude = fabs(y);                                                                 \
        double limit = magnitude * rtol + atol;                                                     \
        mismatches[0] += (diff > limit) & (x != y);                                                 \
        max_abs[0] = diff > max_abs[0] ? diff : max_abs[0];                                         \
        nonzero[0] += y != 0.0;                                                                     \
        double rel = diff / (y != 0.0 ? magnitude : INFINITY);                                      \
        max_rel[0] = rel > max_rel[0] ? rel : max_rel[0];                                           \
        if (SEVERITY) {                                                                             \
            double ratio = diff / limit;                                                            \
            excess[0] = ratio > excess[0] ? ratio : excess[0];                                      \
        }                                                                                           \
        d0[0] += x * y;                                                                             \
        q0[0] += x * x;                                                                             \
        r0[0] += y * y;                                                                             \
    }

DEFINE_COMPARE(f32_f32, load_f32, load_f32, 0)
DEFINE_COMPARE(f32_f32_severity, load_f32, load_f32, 1)
DEFINE_COMPARE(f16_f16, load_f16, load_f16, 0)
DEFINE_COMPARE(f16_f16_severity, load_f16, load_f16, 1)
DEFINE_COMPARE(f16_f32, load_f16, load_f32, 0)
DEFINE_COMPARE(f16_f32_severity, load_f16, load_f32, 1)

/* A fast comparison pass in three steps, as the statistics' (StatsRun): compare_begin
 * gives 0 when the pair is not for the fast loops (other sizes, rounding, empty),
 * compare_end 0 when it met a NaN/Inf. */
typedef struct {
    CompareJob job;
    SpanFn fn;
    size_t spans;
    int severity;
} CompareRun;

static int compare_begin(const Input *a, const Input *e, double atol, double rtol, int severity,
                         CompareRun *run) {
    memset(run, 0, sizeof *run);
    int ta = a->source.type, te = e->source.type, s = severity;
    if (a->count != e->count || !a->count) return 0;
    if (ta == T_FLOAT && te == T_FLOAT) {
        run->fn = s ? compare_f32_f32_severity : compare_f32_f32;
    } else if (ta == T_FLOAT16 && te == T_FLOAT16) {
        run->fn = s ? compare_f16_f16_severity : compare_f16_f16;
    } else if (ta == T_FLOAT16 && te == T_FLOAT) {
        run->fn = s ? compare_f16_f32_severity : compare_f16_f32;
    } else {
        return 0;
    }
    run->spans = span_count(a->count);
    run->severity = s;
    run->job.parts = (ComparePart *)malloc(run->spans * sizeof *run->job.parts);
    if (!run->job.parts) return 0;
    run->job.a = a->source.data;
    run->job.e = e->source.data;
    run->job.count = a->count;
    run->job.atol = atol;
    run->job.rtol = rtol;
    return 1;
}

static int compare_end(CompareRun *run, double *numbers) {
    ComparePart *parts = run->job.parts;
    Pairwise dot, norm, reference_norm;
    memset(&dot, 0, sizeof dot);
    memset(&norm, 0, sizeof norm);
    memset(&reference_norm, 0, sizeof reference_norm);
    ComparePart all;
    memset(&all, 0, sizeof all);
    for (size_t k = 0; k < run->spans; k++) {
        all.mismatches += parts[k].mismatches;
        all.nonzero += parts[k].nonzero;
        all.max_abs = parts[k].max_abs > all.max_abs ? parts[k].max_abs : all.max_abs;
        all.max_rel = parts[k].max_rel > all.max_rel ? parts[k].max_rel : all.max_rel;
        all.excess = parts[k].excess > all.excess ? parts[k].excess : all.excess;
        pairwise_add(&dot, parts[k].dot);
        pairwise_add(&norm, parts[k].norm);
        pairwise_add(&reference_norm, parts[k].reference_norm);
    }
    free(parts);
    double q = pairwise_total(&norm), r = pairwise_total(&reference_norm);
    if (!isfinite(q) || !isfinite(r)) return 0;
    numbers[0] = numbers[1] = numbers[2] = numbers[3] = 0;
    numbers[4] = (double)all.mismatches;
    numbers[5] = (double)run->job.count;
    numbers[6] = (double)all.nonzero;
    numbers[7] = all.max_abs;
    numbers[8] = all.max_rel;
    numbers[9] = pairwise_total(&dot);
    numbers[10] = q;
    numbers[11] = r;
    numbers[12] = run->severity ? all.excess : NAN;
    numbers[13] = 0;
    return 1;
}

static void compare_general(const Input *a_in, const Input *e_in, double atol, double rtol, int severity,
                            double *numbers) {
    const Input a = *a_in, e = *e_in;
    /* The general pass (NaN/Inf, other sizes, a float32 candidate rounded to a float16
     * reference, or an empty pair): one thread. */
    const int as_type = e.source.type;
    double nan_a = 0, nan_e = 0, inf_a = 0, inf_e = 0;
    /* NaN and Inf are counted over each whole side; the rest over the common length. */
    for (size_t i = 0; i < a.count; i++) {
        double v = load_as(a.source, as_type, i);
        nan_a += v != v;
        inf_a += isinf(v) != 0;
    }
    for (size_t i = 0; i < e.count; i++) {
        double v = load(e.source, i);
        nan_e += v != v;
        inf_e += isinf(v) != 0;
    }
    size_t n = a.count < e.count ? a.count : e.count;
    double mismatches = 0, finite = 0, nonzero = 0, max_abs = 0, max_rel = 0;
    double excess = 0, born = 0;
    Pairwise dot, norm, reference_norm;
    memset(&dot, 0, sizeof dot);
    memset(&norm, 0, sizeof norm);
    memset(&reference_norm, 0, sizeof reference_norm);
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t end = start + BLOCK < n ? start + BLOCK : n;
        double block_dot = 0, block_norm = 0, block_reference = 0;
        for (size_t i = start; i < end; i++) {
            double x = load_as(a.source, as_type, i);
            double y = load(e.source, i);
            double raw = load(a.source, i); /* actual in its own dtype */
            int bad_x = !isfinite(x), bad_y = !isfinite(y), bad_raw = !isfinite(raw);
            double magnitude = fabs(y);
            double limit = magnitude * rtol + atol;
            if (!bad_x && !bad_y) {
                double diff = fabs(x - y);
                finite += 1;
                if (x != y && diff > limit) mismatches += 1;
                if (diff > max_abs) max_abs = diff;
                if (y != 0.0) {
                    double rel = diff / magnitude;
                    nonzero += 1;
                    if (rel > max_rel) max_rel = rel;
                }
                block_dot += x * y;
                block_norm += x * x;
                block_reference += y * y;
            } else if (!(x == y || (x != x && y != y))) {
                mismatches += 1;
            }
            if (!bad_raw && !bad_y) {
                double ratio = fabs(raw - y) / limit;
                if (ratio > excess) excess = ratio;
            }
            born += bad_raw && !bad_y;
        }
        pairwise_add(&dot, block_dot);
        pairwise_add(&norm, block_norm);
        pairwise_add(&reference_norm, block_reference);
    }
    numbers[0] = nan_a;
    numbers[1] = nan_e;
    numbers[2] = inf_a;
    numbers[3] = inf_e;
    numbers[4] = mismatches;
    numbers[5] = finite;
    numbers[6] = nonzero;
    numbers[7] = max_abs;
    numbers[8] = max_rel;
    numbers[9] = pairwise_total(&dot);
    numbers[10] = pairwise_total(&norm);
    numbers[11] = pairwise_total(&reference_norm);
    numbers[12] = severity ? excess : NAN;
    numbers[13] = born;
}

/* The tolerance input: (atol, rtol), or 0 when it is not a float64 pair. */
static int tolerance(const Input *tol, double *atol, double *rtol) {
    if (!tol->ok || tol->source.type != T_DOUBLE || tol->count != 2) return 0;
    *atol = ((const double *)tol->source.data)[0];
    *rtol = ((const double *)tol->source.data)[1];
    return 1;
}

static void compare_pair(const Input *a, const Input *e, double atol, double rtol, const Kernel *k,
                         double *numbers) {
    CompareRun run;
    if (compare_begin(a, e, atol, rtol, k->severity, &run)) {
        for_spans(run.fn, &run.job, run.spans, k->threads);
        if (compare_end(&run, numbers)) return;
    }
    compare_general(a, e, atol, rtol, k->severity, numbers);
}

/* NaN and Inf counts from the bits of each element (exponent all ones: Inf when the
 * mantissa is zero, NaN otherwise), one integer loop per dtype. */
#define DEFINE_NONFINITE(SUFFIX, TYPE, MAGNITUDE, INF)                                              \
    static VECTOR_CLONES void nonfinite_##SUFFIX(const void *data, size_t count, int64_t *nan,      \
                                                 int64_t *inf) {                                    \
        const TYPE *bits = (const TYPE *)data;                                                      \
        int64_t nans = 0, infs = 0;                                                                 \
        for (size_t i = 0; i < count; i++) {                                                        \
            TYPE magnitude = bits[i] & (MAGNITUDE);                                                 \
            nans += magnitude > (INF);                                                              \
            infs += magnitude == (INF);                                                             \
        }                                                                                           \
        *nan = nans;                                                                                \
        *inf = infs;                                                                                \
    }

DEFINE_NONFINITE(f32, uint32_t, 0x7fffffffu, 0x7f800000u)
DEFINE_NONFINITE(f16, uint16_t, 0x7fffu, 0x7c00u)
DEFINE_NONFINITE(bf16, uint16_t, 0x7fffu, 0x7f80u)
DEFINE_NONFINITE(f64, uint64_t, 0x7fffffffffffffffull, 0x7ff0000000000000ull)

/* numbers[0] and [2] (or [1] and [3]): NaN and Inf counts of x in its own dtype. */
static void count_nonfinite(const Input *x, double *nan, double *inf) {
    int64_t nans = 0, infs = 0;
    switch (x->source.type) {
    case T_FLOAT: nonfinite_f32(x->source.data, x->count, &nans, &infs); break;
    case T_FLOAT16: nonfinite_f16(x->source.data, x->count, &nans, &infs); break;
    case T_BFLOAT16: nonfinite_bf16(x->source.data, x->count, &nans, &infs); break;
    default: nonfinite_f64(x->source.data, x->count, &nans, &infs); break;
    }
    *nan = (double)nans;
    *inf = (double)infs;
}

static void compare_inputs(Kernel *k, OrtKernelContext *context, const Input *ap, const Input *ep,
                           const Input *tp) {
    Api api = k->api;
    Input a = *ap, e = *ep, tol = *tp;
    int64_t fourteen = 14;
    double *numbers = (double *)output(api, context, 0, &fourteen, 1);
    write_shape(api, context, 1, &a);
    write_shape(api, context, 2, &e);
    if (!numbers) {
        return;
    }
    for (int j = 0; j < 14; j++) {
        numbers[j] = NAN;
    }
    double atol, rtol;
    if ((!a.ok && a.count) || (!e.ok && e.count) || !tolerance(&tol, &atol, &rtol)) {
        return;
    }
    if (k->counts) { /* each side in its own dtype; the other numbers stay NaN */
        count_nonfinite(&a, &numbers[0], &numbers[2]);
        count_nonfinite(&e, &numbers[1], &numbers[3]);
        return;
    }
    compare_pair(&a, &e, atol, rtol, k, numbers);
}

static void compare_compute(void *kernel, OrtKernelContext *context) {
    Kernel *k = (Kernel *)kernel;
    Input a = read_input(k->api, context, 0);
    Input e = read_input(k->api, context, 1);
    Input tol = read_input(k->api, context, 2);
    compare_inputs(k, context, &a, &e, &tol);
    drop_input(&a);
    drop_input(&e);
    drop_input(&tol);
}

/* ---- MeasurePair -------------------------------------------------------------------- */

/* MeasurePair(actual, expected, tolerance) -> ComparePair's three outputs, then
 * TensorStats' numbers of ``actual``: each span of the pair is compared, then measured
 * while it is still in the cache, so the candidate's activation is read from memory
 * once for both (a layer comparison measures and compares every candidate tensor). */
typedef struct {
    CompareRun *compare;
    StatsRun *stats;
} MeasureJob;

static void measure_span(void *arg, size_t k) {
    MeasureJob *job = (MeasureJob *)arg;
    job->compare->fn(&job->compare->job, k);
    job->stats->fn(&job->stats->job, k);
}

static void measure_inputs(Kernel *k, OrtKernelContext *context, const Input *ap, const Input *ep,
                           const Input *tp) {
    Api api = k->api;
    Input a = *ap, e = *ep, tol = *tp;
    int64_t fourteen = 14, seven = 7;
    double *numbers = (double *)output(api, context, 0, &fourteen, 1);
    write_shape(api, context, 1, &a);
    write_shape(api, context, 2, &e);
    double *stats = (double *)output(api, context, 3, &seven, 1);
    if (!numbers || !stats) {
        return;
    }
    for (int j = 0; j < 14; j++) numbers[j] = NAN;
    for (int j = 0; j < 7; j++) stats[j] = NAN;
    double atol, rtol;
    if ((!a.ok && a.count) || (!e.ok && e.count) || !tolerance(&tol, &atol, &rtol)) {
        return;
    }
    CompareRun compare;
    StatsRun measure;
    if (compare_begin(&a, &e, atol, rtol, k->severity, &compare)) {
        if (stats_begin(&a, &measure)) {
            /* (spans of both are SPAN elements of the same tensor) */
            MeasureJob job = {&compare, &measure};
            for_spans(measure_span, &job, compare.spans, k->threads);
            int compared = compare_end(&compare, numbers);
            int measured = stats_end(&measure, stats);
            if (!compared) compare_general(&a, &e, atol, rtol, k->severity, numbers);
            if (!measured) stats_general(&a, stats);
            return;
        }
        for_spans(compare.fn, &compare.job, compare.spans, k->threads);
        if (!compare_end(&compare, numbers)) compare_general(&a, &e, atol, rtol, k->severity, numbers);
    } else {
        compare_general(&a, &e, atol, rtol, k->severity, numbers);
    }
    measure_tensor(&a, k->threads, stats);
}

static void measure_compute(void *kernel, OrtKernelContext *context) {
    Kernel *k = (Kernel *)kernel;
    Input a = read_input(k->api, context, 0);
    Input e = read_input(k->api, context, 1);
    Input tol = read_input(k->api, context, 2);
    measure_inputs(k, context, &a, &e, &tol);
    drop_input(&a);
    drop_input(&e);
    drop_input(&tol);
}

static const char *measure_name(const OrtCustomOp *op) {
    (void)op;
    return "MeasurePair";
}
static size_t measure_output_count(const OrtCustomOp *op) {
    (void)op;
    return 4;
}
static int measure_output_type(const OrtCustomOp *op, size_t index) {
    (void)op;
    return index == 0 || index == 3 ? T_DOUBLE : T_INT64;
}

static const char *compare_name(const OrtCustomOp *op) {
    (void)op;
    return "ComparePair";
}
static int compare_input_type(const OrtCustomOp *op, size_t index) {
    (void)op;
    return index == 2 ? T_DOUBLE : T_UNDEFINED;
}
static size_t compare_input_count(const OrtCustomOp *op) {
    (void)op;
    return 3;
}
static int compare_output_type(const OrtCustomOp *op, size_t index) {
    (void)op;
    return index == 0 ? T_DOUBLE : T_INT64;
}
static size_t compare_output_count(const OrtCustomOp *op) {
    (void)op;
    return 3;
}

/* ---- Stored --------------------------------------------------------------------------- */

static void stored_compute(void *kernel, OrtKernelContext *context) {
    Kernel *k = (Kernel *)kernel;
    Input x = read_input(k->api, context, 0);
    if (x.value && x.source.type == T_FLOAT16) {
        void *copy = output(k->api, context, 0, dims_of(&x), x.rank);
        if (copy && x.count) memcpy(copy, x.source.data, x.count * sizeof(uint16_t));
    }
    drop_input(&x);
}

static const char *stored_name(const OrtCustomOp *op) {
    (void)op;
    return "Stored";
}
static int stored_type(const OrtCustomOp *op, size_t index) {
    (void)op;
    (void)index;
    return T_FLOAT16;
}
static size_t one(const OrtCustomOp *op) {
    (void)op;
    return 1;
}

/* ---- registration -------------------------------------------------------------------- */

static const OrtCustomOp stats_op = {
    API_VERSION,       create_kernel,      stats_name,     cpu_provider,   stats_input_type,
    stats_input_count, stats_output_type,  stats_output_count, stats_compute, destroy_kernel,
    required,          required,           default_memory,
};

static const OrtCustomOp compare_op = {
    API_VERSION,         create_kernel,       compare_name,         cpu_provider,    compare_input_type,
    compare_input_count, compare_output_type, compare_output_count, compare_compute, destroy_kernel,
    required,            required,            default_memory,
};

static const OrtCustomOp measure_op = {
    API_VERSION,         create_kernel,       measure_name,         cpu_provider,    compare_input_type,
    compare_input_count, measure_output_type, measure_output_count, measure_compute, destroy_kernel,
    required,            required,            default_memory,
};

static const OrtCustomOp stored_op = {
    API_VERSION, create_kernel,  stored_name, cpu_provider,   stored_type, one,
    stored_type, one,            stored_compute, destroy_kernel, required, required,
    default_memory,
};

SURGEON_EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    Api api = (Api)base->GetApi(API_VERSION);
    if (!api) {
        return NULL; /* cannot even make a status; onnxruntime then fails on the nodes */
    }
    OrtCustomOpDomain *domain = NULL;
    OrtStatus *status =
        CALL(api, API_CreateCustomOpDomain, OrtStatus *(*)(const char *, OrtCustomOpDomain **))("ai.surgeon", &domain);
    if (status) return status;
    status = CALL(api, API_CustomOpDomain_Add, OrtStatus *(*)(OrtCustomOpDomain *, const OrtCustomOp *))(domain, &stats_op);
    if (status) return status;
    status = CALL(api, API_CustomOpDomain_Add, OrtStatus *(*)(OrtCustomOpDomain *, const OrtCustomOp *))(domain, &compare_op);
    if (status) return status;
    status = CALL(api, API_CustomOpDomain_Add, OrtStatus *(*)(OrtCustomOpDomain *, const OrtCustomOp *))(domain, &measure_op);
    if (status) return status;
    status = CALL(api, API_CustomOpDomain_Add, OrtStatus *(*)(OrtCustomOpDomain *, const OrtCustomOp *))(domain, &stored_op);
    if (status) return status;
    /* The domain is not released: the sessions made with these options keep using it. */
    return CALL(api, API_AddCustomOpDomain, OrtStatus *(*)(OrtSessionOptions *, OrtCustomOpDomain *))(options, domain);
}

/* Built as a Python extension module by setuptools, which expects this symbol on some
 * platforms; it is never imported (onnxruntime loads the library by its path). */
SURGEON_EXPORT void *PyInit__fastops(void) { return NULL; }
