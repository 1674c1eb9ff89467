// Fused CPU kernels: one call evaluates one chunk of the edge-conditioned aggregation, forward or backward
// (dsmpnn.nn.kernels.native loads this file and describes the arguments).
//
// A chunk holds n sources; source j owns d_j consecutive (sorted) edges. With a [e, F] the edge inputs,
// h = mlp(a) [e, K] the kernel features (h~ = [h, 1], K' = K + 1, when Q has the bias row), Q_j = x_j W [K', C]
// the node kernels:
//
//   forward:   out[dst_e] += w_e * (h~_e Q_j)                   for each edge e of j      (scatter fused)
//   backward:  G_j = w_e * g[dst_e]                              [d_j, C]                  (gather fused)
//              dQ_j = H~_j^T G_j                                 [K', C]
//              dH_j = G_j Q^T_j                                  [d_j, K]  (Q^T recomputed, bias row left out)
//              dX[j] += dQ_j W^T,  dW += X_blk^T dQ_blk          [C_in], [C_in, K' C]
//              and the MLP's backward from dH: its weight and bias gradients, dL/da.
//
// Nothing is kept between calls: per block of at most 16 sources, Q, h (the MLP run again in backward) and
// every intermediate are made in buffers reused from block to block, so they stay in L1/L2; nothing of size
// [e, C] or [n, K', C] is ever written to memory.
//
// All the products are out[M, L] = A[M, R] B[R, L] with a strided A, and run through one register-blocked
// micro-kernel: 6 rows of `out` by NV vectors of `Vec<T>::W` columns, accumulated over R with B's row loaded
// once per step for all rows (the layout of a BLAS micro-kernel, written with GCC/Clang vector extensions so
// that the compiler emits AVX2/AVX-512 or SSE as the machine allows). Every function is single-threaded: the
// caller runs chunks on several threads, each with its own `out` and gradient accumulators.
//
// The sums are taken in a fixed order (over R, then rows in edge order), so results are deterministic.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
    typedef float type __attribute__((vector_size(32)));
    static constexpr int W = 8;
};
template <>
struct Vec<double> {
    typedef double type __attribute__((vector_size(32)));
    static constexpr int W = 4;
};

// Tells the compiler a vector stays in a register (it would otherwise reload B's row for every row of the tile).
// Only where a whole 32-byte vector fits one register (AVX); elsewhere nothing, and the code stays correct.
template <typename V>
inline void keep_in_register(V& v) {
#if defined(__AVX__)
    asm("" : "+x"(v));
#else
    (void)v;
#endif
}

// Hides a value's origin from the optimiser, so that it is used as computed (here: rounded, not fused into an FMA).
template <typename V>
inline void opaque(V& v) {
#if defined(__AVX__)
    asm("" : "+x"(v));
#elif defined(__aarch64__)
    asm("" : "+w"(v));
#else
    asm("" : "+m"(v));
#endif
}

template <typename V, typename T>
inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <typename V, typename T>
inline void store(T* p, const V& v) {
    std::memcpy(p, &v, sizeof v);
}

// Where a row of the product goes: out[idx[m]] += scale[m] * acc (idx set), out[m] += acc (add), else
// out[m] = act(acc + bias) (bias: one value per column or null; act: ReLU when relu is set, else none).
template <typename T>
struct Epilogue {
    T* out;
    int64_t ldo;
    const int64_t* idx;
    const T* scale;            // nullptr: 1 (only read when idx is set)
    bool add = false;          // without idx: accumulate instead of store
    const T* bias = nullptr;   // store only
    bool relu = false;         // store only
};

template <typename V>
inline V relu(V v) {
    const auto positive = v > V{};  // all bits set where v > 0
    return (V)((decltype(positive))v & positive);
}

// Rows [m0, m0 + MR) and columns [l0, l0 + NV W) of out = A B, A[m, r] = a[m sam + r sar], B[r, l] = b[r ldb + l].
template <typename T, int MR, int NV>
inline void tile(const T* a, int64_t sam, int64_t sar, const T* b, int64_t ldb, int64_t R, const Epilogue<T>& ep,
                 int64_t m0, int64_t l0) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::W;
    V acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = V{};
    const T* ar = a + m0 * sam;
    const T* br = b + l0;
    for (int64_t r = 0; r < R; ++r, ar += sar, br += ldb) {
        V bv[NV];
        for (int v = 0; v < NV; ++v) {
            bv[v] = load<V>(br + v * W);
            keep_in_register(bv[v]);  // one load per vector of B's row, for all MR rows
        }
        for (int i = 0; i < MR; ++i) {
            const T s = ar[i * sam];
            for (int v = 0; v < NV; ++v) acc[i][v] += s * bv[v];
        }
    }
    for (int i = 0; i < MR; ++i) {
        const int64_t m = m0 + i;
        if (ep.idx) {
            T* o = ep.out + ep.idx[m] * ep.ldo + l0;
            const T s = ep.scale ? ep.scale[m] : T(1);
            for (int v = 0; v < NV; ++v) store(o + v * W, load<V>(o + v * W) + s * acc[i][v]);
        } else if (ep.add) {
            T* o = ep.out + m * ep.ldo + l0;
            for (int v = 0; v < NV; ++v) store(o + v * W, load<V>(o + v * W) + acc[i][v]);
        } else {
            T* o = ep.out + m * ep.ldo + l0;
            for (int v = 0; v < NV; ++v) {
                V r = ep.bias ? acc[i][v] + load<V>(ep.bias + l0 + v * W) : acc[i][v];
                store(o + v * W, ep.relu ? relu(r) : r);
            }
        }
    }
}

// Columns [l0, L) (fewer than W) of rows [0, M), one scalar at a time.
template <typename T>
void tail_columns(const T* a, int64_t sam, int64_t sar, const T* b, int64_t ldb, int64_t M, int64_t R, int64_t L,
                  const Epilogue<T>& ep, int64_t l0) {
    for (int64_t m = 0; m < M; ++m)
        for (int64_t l = l0; l < L; ++l) {
            T acc = 0;
            for (int64_t r = 0; r < R; ++r) acc += a[m * sam + r * sar] * b[r * ldb + l];
            if (ep.idx)
                ep.out[ep.idx[m] * ep.ldo + l] += (ep.scale ? ep.scale[m] : T(1)) * acc;
            else if (ep.add)
                ep.out[m * ep.ldo + l] += acc;
            else {
                const T r = ep.bias ? acc + ep.bias[l] : acc;
                ep.out[m * ep.ldo + l] = ep.relu && !(r > T(0)) ? T(0) : r;
            }
        }
}

// All rows of one column block: tiles of MR = 6 rows (12 accumulators for NV = 2: enough independent FMA chains
// to hide the FMA latency, with B's 2 vectors and a broadcast in the 16 AVX2 registers), then the remainder.
template <typename T, int NV>
inline void column_block(const T* a, int64_t sam, int64_t sar, const T* b, int64_t ldb, int64_t M, int64_t R,
                         const Epilogue<T>& ep, int64_t l0) {
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) tile<T, 6, NV>(a, sam, sar, b, ldb, R, ep, m, l0);
    switch (M - m) {
        case 5: tile<T, 5, NV>(a, sam, sar, b, ldb, R, ep, m, l0); break;
        case 4: tile<T, 4, NV>(a, sam, sar, b, ldb, R, ep, m, l0); break;
        case 3: tile<T, 3, NV>(a, sam, sar, b, ldb, R, ep, m, l0); break;
        case 2: tile<T, 2, NV>(a, sam, sar, b, ldb, R, ep, m, l0); break;
        case 1: tile<T, 1, NV>(a, sam, sar, b, ldb, R, ep, m, l0); break;
        default: break;
    }
}

// out[M, L] = A[M, R] B[R, L] into the epilogue: column blocks of 2 vectors, then one vector, then scalars.
template <typename T>
void gemm(const T* a, int64_t sam, int64_t sar, const T* b, int64_t ldb, int64_t M, int64_t R, int64_t L,
          const Epilogue<T>& ep) {
    constexpr int W = Vec<T>::W;
    int64_t l = 0;
    for (; l + 2 * W <= L; l += 2 * W) column_block<T, 2>(a, sam, sar, b, ldb, M, R, ep, l);
    for (; l + W <= L; l += W) column_block<T, 1>(a, sam, sar, b, ldb, M, R, ep, l);
    if (l < L) tail_columns(a, sam, sar, b, ldb, M, R, L, ep, l);
}


// ---------------------------------------------------------------------------------------------------------------
// One chunk of the aggregation, block by block: a block is up to kBlockSources consecutive sources (fewer when
// their edges pass kBlockEdges; one source of higher degree is a block of its own). Everything a block needs
// (the sources' x rows and Q, the edges' kernel features and the kernel's intermediate values) is made in small
// buffers reused from block to block, so it stays in L1/L2 while it is used.

constexpr int64_t kBlockSources = 16;  // Q of a block: 16 K' C floats (133 KB at K' = 65, C = 32)
constexpr int64_t kBlockEdges = 1024;

// The kernel MLP h = act_L(... act_1(a W_1^T + b_1) ...) W_L^T + b_L ..., layer l mapping dims[l] -> dims[l + 1].
enum Act : int32_t { kIdentity = 0, kRelu = 1, kGelu = 2, kSilu = 3 };

// Smooth activations and their derivatives, elementwise over n values: y = act(z) (row stride of y: any) and
// g *= act'(z). Both are accurate to a few ulp of the result over the whole range, tails included:
//
//   GELU (exact): z Phi(z), slope Phi(z) + z phi(z), phi(z) = exp(-z^2/2) / sqrt(2 pi). With t = |z| and
//     P = Phi(-t) = erfc(t / sqrt 2) / 2, Phi(z) = P for z < 0 and 1 - P otherwise; P itself (the lower tail,
//     where 1 + erf(z / sqrt 2) would cancel) is never formed as a difference.
//   SiLU: z s(z), slope s (1 + z (1 - s)), with e = exp(-|z|) <= 1 and r = 1 / (1 + e): s = r, 1 - s = e r for
//     z >= 0 and s = e r, 1 - s = r for z < 0 (no overflow, no 1 - s cancellation).
//
// float64: libm's erfc and exp. float32, eight at a time: P = exp(-t^2/2) p(q) / (t + 2), q = (t - 2)/(t + 2) in
// [-1, 1), p a degree-10 polynomial fitted to (t + 2) erfcx(t / sqrt 2) / 2 on t in [0, 15] (relative error of the
// fit 3e-9, of the float32 evaluation about 2e-7); exp(-t^2/2) as exp(-s/2) (1 - d/2) with s = fl(t t) and
// d = t t - s exact (Dekker's product), so the rounding of t^2 (relative 6e-8, i.e. 6e-8 t^2/2 in the exponent)
// does not spoil it; exp by Cephes' polynomial (about 1 ulp) scaled by 2^n in two factors, so that it is right
// down to the denormals and overflows to +inf. tests/nn/kernels/test_native.py holds them to a float64 truth (mpmath).
inline double gelu_value(double z) { return z * 0.5 * std::erfc(z * -0.70710678118654752); }
inline double gelu_slope(double z) {
    return 0.5 * std::erfc(z * -0.70710678118654752) + z * std::exp(z * z * -0.5) * 0.3989422804014327;
}
inline double silu_s(double z, double* one_minus_s) {  // s(z), and 1 - s(z)
    const double e = std::exp(-std::fabs(z)), r = 1.0 / (1.0 + e);
    *one_minus_s = z >= 0 ? e * r : r;
    return z >= 0 ? r : e * r;
}

inline double act_value(int32_t act, double z) {
    if (act == kGelu) return gelu_value(z);
    double oms;
    return z * silu_s(z, &oms);  // kSilu
}

inline double act_slope(int32_t act, double z) {
    if (act == kGelu) return gelu_slope(z);
    double oms;
    const double s = silu_s(z, &oms);
    return s * (z * oms + 1.0);
}

typedef Vec<float>::type F8;
typedef int32_t I8 __attribute__((vector_size(32)));

inline F8 splat(float v) { return F8{} + v; }
inline F8 min_of(F8 a, float b) { return a > splat(b) ? splat(b) : a; }  // NaN stays NaN ((mask ? a : b): GCC, Clang)
inline F8 max_of(F8 a, float b) { return a < splat(b) ? splat(b) : a; }
inline F8 abs_of(F8 a) { return (F8)((I8)a & (I8{} + 0x7fffffff)); }

// exp(x): x = n ln 2 + r, |r| <= ln(2)/2, exp(r) by Cephes' expf polynomial, times 2^n as 2^(n/2) 2^(n - n/2) so
// that n from -150 (underflow to 0 through the denormals) to 128 (+inf) is exact.
inline F8 exp_of(F8 x) {
    x = max_of(min_of(x, 88.8f), -104.0f);
    const F8 fx = x * splat(1.44269504088896341f) + splat(0.5f);
    I8 n = __builtin_convertvector(fx, I8);
    n -= (__builtin_convertvector(n, F8) > fx) ? I8{} + 1 : I8{};  // floor
    const F8 fn = __builtin_convertvector(n, F8);
    const F8 r = x - fn * splat(0.693359375f) + fn * splat(2.12194440e-4f);
    F8 y = splat(1.9875691500e-4f);
    y = y * r + splat(1.3981999507e-3f);
    y = y * r + splat(8.3334519073e-3f);
    y = y * r + splat(4.1665795894e-2f);
    y = y * r + splat(1.6666665459e-1f);
    y = y * r + splat(5.0000001201e-1f);
    y = y * r * r + r + splat(1.0f);
    const I8 n1 = n >> 1;
    return y * (F8)((n1 + 127) << 23) * (F8)((n - n1 + 127) << 23);
}

// Phi(-t) = erfc(t / sqrt 2) / 2 for t >= 0 (see above); *density = exp(-t^2/2).
inline F8 lower_tail(F8 t, F8* density) {
    t = min_of(t, 15.0f);                                  // Phi(-15) = 3.7e-51: 0 in float32
    const F8 hi = (F8)((I8)t & (I8{} - 4096));             // t = hi + lo, 12 significant bits each
    const F8 lo = t - hi;
    F8 s = t * t;
    opaque(s);                                             // s must stay fl(t t): no FMA fused across it
    const F8 d = ((hi * hi - s) + hi * lo + hi * lo) + lo * lo;  // t t - s, exactly
    *density = exp_of(s * splat(-0.5f)) * (splat(1.0f) - d * splat(0.5f));
    const F8 rt = splat(1.0f) / (t + splat(2.0f));
    const F8 q = (t - splat(2.0f)) * rt;
    F8 p = splat(-7.59341346565634e-05f);
    p = p * q + splat(2.9390879717539065e-05f);
    p = p * q + splat(7.214319193735719e-04f);
    p = p * q + splat(8.854009793139994e-04f);
    p = p * q + splat(-1.8878838745877147e-03f);
    p = p * q + splat(-6.751852575689554e-03f);
    p = p * q + splat(-4.841390473302454e-04f);
    p = p * q + splat(3.67216132581234e-02f);
    p = p * q + splat(2.8798500075936317e-02f);
    p = p * q + splat(-3.3140456676483154e-01f);
    p = p * q + splat(6.724079847335815e-01f);
    return *density * (p * rt);
}

template <typename T>
struct Smooth;

template <>
struct Smooth<double> {
    static void value(int32_t act, const double* z, int64_t n, double* y) {
        for (int64_t i = 0; i < n; ++i) y[i] = act_value(act, z[i]);
    }
    static void times_slope(int32_t act, const double* z, int64_t n, double* g) {
        for (int64_t i = 0; i < n; ++i) g[i] *= act_slope(act, z[i]);
    }
};

template <>
struct Smooth<float> {  // eight at a time; the last < 8 through a padded vector
    static F8 gelu_phi(F8 v, F8* density) {  // Phi(v)
        const F8 tail = lower_tail(abs_of(v), density);
        return v < F8{} ? tail : splat(1.0f) - tail;
    }
    static F8 silu_s(F8 v, F8* one_minus_s) {
        const F8 e = exp_of(-abs_of(v));
        const F8 r = splat(1.0f) / (splat(1.0f) + e);
        *one_minus_s = v < F8{} ? r : e * r;
        return v < F8{} ? e * r : r;
    }
    static F8 value8(int32_t act, F8 v) {
        F8 aux;
        return v * (act == kGelu ? gelu_phi(v, &aux) : silu_s(v, &aux));
    }
    static F8 slope8(int32_t act, F8 v) {
        F8 aux;
        if (act == kGelu) {
            const F8 phi = gelu_phi(v, &aux);
            return phi + v * aux * splat(0.3989422804014327f);
        }
        const F8 s = silu_s(v, &aux);
        return s * (v * aux + splat(1.0f));
    }
    static void value(int32_t act, const float* z, int64_t n, float* y) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) store(y + i, value8(act, load<F8>(z + i)));
        if (i < n) {
            F8 v{};
            std::memcpy(&v, z + i, (n - i) * sizeof(float));
            v = value8(act, v);
            std::memcpy(y + i, &v, (n - i) * sizeof(float));
        }
    }
    static void times_slope(int32_t act, const float* z, int64_t n, float* g) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) store(g + i, load<F8>(g + i) * slope8(act, load<F8>(z + i)));
        if (i < n) {
            F8 v{}, gv{};
            std::memcpy(&v, z + i, (n - i) * sizeof(float));
            std::memcpy(&gv, g + i, (n - i) * sizeof(float));
            gv *= slope8(act, v);
            std::memcpy(g + i, &gv, (n - i) * sizeof(float));
        }
    }
};

// What stays the same for every chunk of one pass (one layer call). Pointers are to T (float or double).
struct Pass {
    int64_t cin, k1, k, c;        // C_in, K' (rows of Q: K, or K + 1 with the bias row), K (kernel width), C
    const void* x;                // [N_src, C_in]; or Q itself, [N_src, K', C], when wq is null
    const void* wq;               // W [C_in, K' C] (Q = x W) or null
    const void* wqt;              // W^T [K' C, C_in] (backward, dX) or null
    const void* wqk;              // W permuted to [C_in, C K] (backward: Q^T without the bias row) or null
    int64_t nl;                   // layers of the kernel MLP (0: h = the edge inputs themselves)
    const int64_t* dims;          // [nl + 1]: dims[0] = F (edge input width), dims[nl] = K
    const void* const* lw;        // [nl] layer weights W_l [dims[l + 1], dims[l]]
    const void* const* lwt;       // [nl] the same transposed, [dims[l], dims[l + 1]]
    const void* const* lb;        // [nl] biases [dims[l + 1]] or null entries
    const int32_t* act;           // [nl] activation after each layer (Act)
    const void* g;                // backward: dL/dout [N, C]
    void* out;                    // forward: [N, C], added to
    void* gx;                     // backward: dL/dx [N_src, C_in] (or dL/dQ [N_src, K' C]) added to, or null
    void* gw;                     // backward: dL/dW [C_in, K' C] added to, or null
    void* const* glw;             // backward: [nl] dL/dW_l^T [dims[l], dims[l + 1]] added to, or null entries
    void* const* glb;             // backward: [nl] dL/db_l added to, or null entries
};

// One chunk: n sources, e edges (sorted by source).
struct Chunk {
    int64_t n, e;
    const int64_t* deg;    // [n] edges per source
    const int64_t* nodes;  // [n] source node ids
    const int64_t* dst;    // [e] targets
    const void* ew;        // [e] edge weights or null (1)
    const void* a;         // edge inputs: rows rows[i] of a [E, F]; or, with rows null, a [e, F] in edge order
    const int64_t* rows;   // [e] or null
    void* ga;              // backward: dL/da, rows rows[i] of [E, F] (or [e, F] in order) written, or null
};

struct Block {
    int64_t j0, j1, e0, e1;  // sources [j0, j1), edges [e0, e1) of the chunk
};

std::vector<Block> blocks_of(const Chunk& ch, int64_t* max_edges) {
    std::vector<Block> out;
    int64_t j = 0, e = 0;
    *max_edges = 0;
    while (j < ch.n) {
        Block b{j, j, e, e};
        while (b.j1 < ch.n && b.j1 - b.j0 < kBlockSources &&
               (b.j1 == b.j0 || b.e1 - b.e0 + ch.deg[b.j1] <= kBlockEdges)) {
            b.e1 += ch.deg[b.j1];
            ++b.j1;
        }
        out.push_back(b);
        *max_edges = b.e1 - b.e0 > *max_edges ? b.e1 - b.e0 : *max_edges;
        j = b.j1;
        e = b.e1;
    }
    return out;
}

// The kernel MLP on the block's edges: acts[0] = edge inputs [eb, F], acts[l + 1] = layer l's output (after its
// activation) [eb, dims[l + 1]]; the last is written into h [eb, K'] (row stride K'), whose column K is 1 when
// K' = K + 1. With nl = 0, h = the inputs.
template <typename T>
struct Kernel {
    const Pass& p;
    std::vector<std::vector<T>> acts;
    std::vector<std::vector<T>> pre;  // pre-activations z_l of the layers with a smooth activation, [eb, dims[l + 1]]
    std::vector<T> pingpong[2];       // backward: dL/d(layer input), alternating between the two

    Kernel(const Pass& pass, int64_t max_edges) : p(pass), acts(pass.nl + 1), pre(pass.nl) {
        int64_t widest = 0;
        for (int64_t l = 0; l <= p.nl; ++l) {
            if (l == 0 || l < p.nl) acts[l].resize(max_edges * p.dims[l]);  // the last layer's output lives in h
            if (l < p.nl && smooth(l)) pre[l].resize(max_edges * p.dims[l + 1]);
            widest = p.dims[l] > widest ? p.dims[l] : widest;
        }
        pingpong[0].resize(max_edges * widest);
        pingpong[1].resize(max_edges * widest);
    }

    bool smooth(int64_t l) const { return p.act[l] == kGelu || p.act[l] == kSilu; }

    void forward(const Chunk& ch, int64_t e0, int64_t eb, T* h) {
        const int64_t f = p.dims[0], k1 = p.k1, k = p.k;
        const T* a = static_cast<const T*>(ch.a) + (ch.rows ? 0 : e0 * f);
        T* in = acts[0].data();
        for (int64_t i = 0; i < eb; ++i) {
            const T* src = ch.rows ? a + ch.rows[e0 + i] * f : a + i * f;
            for (int64_t m = 0; m < f; ++m) in[i * f + m] = src[m];
        }
        for (int64_t l = 0; l < p.nl; ++l) {  // act(a W^T + b): bias and ReLU applied as each tile is stored
            const int64_t di = p.dims[l], dout = p.dims[l + 1];
            const bool last = l + 1 == p.nl;
            T* y = last ? h : acts[l + 1].data();
            const int64_t ldy = last ? k1 : dout;
            const T* bias = static_cast<const T*>(p.lb[l]);
            if (!smooth(l)) {
                gemm<T>(acts[l].data(), di, 1, static_cast<const T*>(p.lwt[l]), dout, eb, di, dout,
                        Epilogue<T>{y, ldy, nullptr, nullptr, false, bias, p.act[l] == kRelu});
                continue;
            }
            T* z = pre[l].data();  // kept for the derivative
            gemm<T>(acts[l].data(), di, 1, static_cast<const T*>(p.lwt[l]), dout, eb, di, dout,
                    Epilogue<T>{z, dout, nullptr, nullptr, false, bias});
            for (int64_t i = 0; i < eb; ++i) Smooth<T>::value(p.act[l], z + i * dout, dout, y + i * ldy);
        }
        if (p.nl == 0)
            for (int64_t i = 0; i < eb; ++i) std::memcpy(h + i * k1, in + i * f, k * sizeof(T));
        if (k1 == k + 1)
            for (int64_t i = 0; i < eb; ++i) h[i * k1 + k] = T(1);
    }

    // gh = dL/dh [eb, K] (overwritten): the parameter gradients added into p.glw / p.glb, dL/da written into
    // ch.ga. Layer by layer: g_pre = act'(z_l) g, dW_l^T += a_l^T g_pre, db_l += sum g_pre, g <- g_pre W_l.
    // h: the block's kernel output [eb, K'] as forward left it (the last layer's activations).
    void backward(const Chunk& ch, int64_t e0, int64_t eb, const T* h, T* gh) {
        T* g = gh;
        for (int64_t l = p.nl - 1; l >= 0; --l) {
            const int64_t di = p.dims[l], dout = p.dims[l + 1];
            if (p.act[l] == kRelu) {  // ReLU's output carries its derivative
                const bool last = l + 1 == p.nl;
                const T* y = last ? h : acts[l + 1].data();
                const int64_t ldy = last ? p.k1 : dout;
                for (int64_t i = 0; i < eb; ++i)
                    for (int64_t m = 0; m < dout; ++m)
                        if (!(y[i * ldy + m] > T(0))) g[i * dout + m] = T(0);
            } else if (smooth(l)) {
                Smooth<T>::times_slope(p.act[l], pre[l].data(), eb * dout, g);
            }
            if (p.glw[l])  // [di, eb] x [eb, dout]
                gemm<T>(acts[l].data(), 1, di, g, dout, di, eb, dout,
                        Epilogue<T>{static_cast<T*>(p.glw[l]), dout, nullptr, nullptr, true});
            if (p.glb[l]) {
                T* gb = static_cast<T*>(p.glb[l]);
                for (int64_t i = 0; i < eb; ++i)
                    for (int64_t m = 0; m < dout; ++m) gb[m] += g[i * dout + m];
            }
            if (l == 0 && !ch.ga) return;
            T* next = pingpong[l % 2].data();  // never g: g is gh or the other buffer
            gemm<T>(g, dout, 1, static_cast<const T*>(p.lw[l]), di, eb, dout, di,
                    Epilogue<T>{next, di, nullptr, nullptr});
            g = next;
        }
        if (!ch.ga) return;
        const int64_t f = p.dims[0];
        T* ga = static_cast<T*>(ch.ga);
        for (int64_t i = 0; i < eb; ++i)
            std::memcpy(ch.rows ? ga + ch.rows[e0 + i] * f : ga + (e0 + i) * f, g + i * f, f * sizeof(T));
    }
};

template <typename T>
void gather_rows(const T* x, int64_t width, const int64_t* idx, int64_t n, T* out) {
    for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * width, x + idx[i] * width, width * sizeof(T));
}

// out[dst_e] += w_e h_e Q_j for every edge e of every source j of the chunk; per block: Q = x[nodes] W (when
// Q is not given), h = kernel(a) for the block's edges, then the [d_j, K'] x [K', C] products, scattered.
template <typename T>
void forward_chunk(const Pass& p, const Chunk& ch) {
    const int64_t k1c = p.k1 * p.c;
    int64_t max_e = 0;
    const std::vector<Block> blocks = blocks_of(ch, &max_e);
    std::vector<T> xs(p.wq ? kBlockSources * p.cin : 0), q(p.wq ? kBlockSources * k1c : 0), h(max_e * p.k1);
    Kernel<T> kern(p, max_e);
    const T* x = static_cast<const T*>(p.x);
    const T* ew = static_cast<const T*>(ch.ew);
    for (const Block& b : blocks) {
        const int64_t nb = b.j1 - b.j0;
        if (p.wq) {
            gather_rows(x, p.cin, ch.nodes + b.j0, nb, xs.data());
            gemm<T>(xs.data(), p.cin, 1, static_cast<const T*>(p.wq), k1c, nb, p.cin, k1c,
                    Epilogue<T>{q.data(), k1c, nullptr, nullptr});
        }
        kern.forward(ch, b.e0, b.e1 - b.e0, h.data());
        const T* hr = h.data();
        for (int64_t j = b.j0, e = b.e0; j < b.j1; e += ch.deg[j], ++j) {
            const int64_t d = ch.deg[j];
            const T* qj = p.wq ? q.data() + (j - b.j0) * k1c : x + ch.nodes[j] * k1c;
            gemm<T>(hr, p.k1, 1, qj, p.c, d, p.k1, p.c,
                    Epilogue<T>{static_cast<T*>(p.out), p.c, ch.dst + e, ew ? ew + e : nullptr});
            hr += d * p.k1;
        }
    }
}

// The adjoint of forward_chunk for g = dL/dout, per block: G_j = w g[dst] [d_j, C], dQ_j = H_j^T G_j [K', C],
// dH_j = G_j Q_j^T [d_j, K] (Q^T recomputed, without the bias row); then, while dQ is in cache,
// dX[nodes_j] += dQ_j W^T and dW += X_blk^T dQ_blk (or dQ itself when Q is given), and the kernel's backward.
template <typename T>
void backward_chunk(const Pass& p, const Chunk& ch) {
    bool want_h = ch.ga != nullptr;
    for (int64_t l = 0; l < p.nl; ++l) want_h = want_h || p.glw[l] || p.glb[l];
    const bool want_q = p.gx || p.gw;
    const int64_t k1c = p.k1 * p.c, ck = p.c * p.k;
    int64_t max_e = 0;
    const std::vector<Block> blocks = blocks_of(ch, &max_e);
    std::vector<T> xs(p.wq ? kBlockSources * p.cin : 0), qt(want_h ? kBlockSources * ck : 0);
    std::vector<T> gq(want_q ? kBlockSources * k1c : 0), h(max_e * p.k1), gm(max_e * p.c), gh(want_h ? max_e * p.k : 0);
    Kernel<T> kern(p, max_e);
    const T* x = static_cast<const T*>(p.x);
    const T* g = static_cast<const T*>(p.g);
    const T* ew = static_cast<const T*>(ch.ew);
    for (const Block& b : blocks) {
        const int64_t nb = b.j1 - b.j0, eb = b.e1 - b.e0;
        if (p.wq && (want_h || p.gw)) gather_rows(x, p.cin, ch.nodes + b.j0, nb, xs.data());
        if (want_h && p.wq) {
            gemm<T>(xs.data(), p.cin, 1, static_cast<const T*>(p.wqk), ck, nb, p.cin, ck,
                    Epilogue<T>{qt.data(), ck, nullptr, nullptr});
        } else if (want_h) {  // Q given: transpose its first K rows
            for (int64_t j = 0; j < nb; ++j) {
                const T* qj = x + ch.nodes[b.j0 + j] * k1c;
                for (int64_t r = 0; r < p.k; ++r)
                    for (int64_t cc = 0; cc < p.c; ++cc) qt[j * ck + cc * p.k + r] = qj[r * p.c + cc];
            }
        }
        kern.forward(ch, b.e0, eb, h.data());
        for (int64_t j = b.j0, e = b.e0; j < b.j1; e += ch.deg[j], ++j) {
            const int64_t d = ch.deg[j], r0 = e - b.e0;
            T* gmj = gm.data() + r0 * p.c;
            for (int64_t r = 0; r < d; ++r) {
                const T s = ew ? ew[e + r] : T(1);
                const T* gr = g + ch.dst[e + r] * p.c;
                for (int64_t cc = 0; cc < p.c; ++cc) gmj[r * p.c + cc] = s * gr[cc];
            }
            const T* hj = h.data() + r0 * p.k1;
            if (want_q)
                gemm<T>(hj, 1, p.k1, gmj, p.c, p.k1, d, p.c,
                        Epilogue<T>{gq.data() + (j - b.j0) * k1c, p.c, nullptr, nullptr});
            if (want_h)
                gemm<T>(gmj, p.c, 1, qt.data() + (j - b.j0) * ck, p.k, d, p.c, p.k,
                        Epilogue<T>{gh.data() + r0 * p.k, p.k, nullptr, nullptr});
        }
        if (want_q && p.wq) {
            if (p.gx)  // [nb, K' C] x [K' C, C_in], rows added into gx[nodes]
                gemm<T>(gq.data(), k1c, 1, static_cast<const T*>(p.wqt), p.cin, nb, k1c, p.cin,
                        Epilogue<T>{static_cast<T*>(p.gx), p.cin, ch.nodes + b.j0, nullptr});
            if (p.gw)  // [C_in, nb] x [nb, K' C]
                gemm<T>(xs.data(), 1, p.cin, gq.data(), k1c, p.cin, nb, k1c,
                        Epilogue<T>{static_cast<T*>(p.gw), k1c, nullptr, nullptr, true});
        } else if (want_q) {
            T* gx = static_cast<T*>(p.gx);
            for (int64_t j = 0; j < nb; ++j) {
                T* o = gx + ch.nodes[b.j0 + j] * k1c;
                const T* src = gq.data() + j * k1c;
                for (int64_t i = 0; i < k1c; ++i) o[i] += src[i];
            }
        }
        if (want_h) kern.backward(ch, b.e0, eb, h.data(), gh.data());
    }
}

}  // namespace

extern "C" {

// native.py checks both when it loads the library: ABI (bump with any change of this interface) and the layout of
// the structs it fills in (a stale or foreign library, or native.py's _Pass/_Chunk out of step with this file).
int dsmpnn_native_abi() { return 4; }

void dsmpnn_native_layout(int64_t* out) {  // out[4]
    out[0] = sizeof(Pass);
    out[1] = offsetof(Pass, glb);
    out[2] = sizeof(Chunk);
    out[3] = offsetof(Chunk, ga);
}

void dsmpnn_forward_f32(const Pass* p, const Chunk* ch) { forward_chunk<float>(*p, *ch); }
void dsmpnn_forward_f64(const Pass* p, const Chunk* ch) { forward_chunk<double>(*p, *ch); }
void dsmpnn_backward_f32(const Pass* p, const Chunk* ch) { backward_chunk<float>(*p, *ch); }
void dsmpnn_backward_f64(const Pass* p, const Chunk* ch) { backward_chunk<double>(*p, *ch); }

}  // extern "C"
