// Fused CPU kernels for one chunk of the edge-conditioned aggregation (dsmpnn.nn.native loads this file).
//
// A chunk holds n sources; source j owns d_j consecutive (sorted) edges. With h [e, K'] the edge features
// (K' = K + 1 when the last column is the constant 1 of the bias row), Q_j [K', C] the node kernels and
// Q^T_j [C, K] their transpose without the bias row:
//
//   forward:   out[dst_e] += w_e * (h_e Q_j)                    for each edge e of j      (scatter fused)
//   backward:  G_j = w_e * g[dst_e]                              [d_j, C]                  (gather fused)
//              dQ_j = H_j^T G_j                                  [K', C]
//              dH_j = G_j Q^T_j                                  [d_j, K]
//   and, with Q = x W, per block of sources while their dQ is still in cache:
//              dX[j] += dQ_j W^T,  dW += X_blk^T dQ_blk          [C_in], [C_in, K' C]
//
// All these products are out[M, L] = A[M, R] B[R, L] with a strided A, and run through one register-blocked
// micro-kernel: MR = 2 rows of `out` by NV vectors of `Vec<T>::W` columns, accumulated over R with B's row loaded
// once per step for both rows (the layout of a BLAS micro-kernel, written with GCC/Clang vector extensions so
// that the compiler emits AVX2/AVX-512 or SSE as the machine allows). Every function is single-threaded: the
// caller runs chunks on several threads, each with its own `out`.
//
// The sums are taken in a fixed order (over R, then rows in edge order), so results are deterministic.

#include <cstdint>
#include <cstring>

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

// Where a row of the product goes: out[idx[m]] += scale[m] * acc (idx set), out[m] += acc (add), else out[m] = acc.
template <typename T>
struct Epilogue {
    T* out;
    int64_t ldo;
    const int64_t* idx;
    const T* scale;    // nullptr: 1 (only read when idx is set)
    bool add = false;  // without idx: accumulate instead of store
};

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
            asm("" : "+x"(bv[v]));  // keep B's row in registers: one load per vector for all MR rows
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
            for (int v = 0; v < NV; ++v) store(o + v * W, acc[i][v]);
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
            else
                ep.out[m * ep.ldo + l] = acc;
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

template <typename T>
void forward(int64_t n, const int64_t* deg, int64_t k1, int64_t c, const T* h, const T* q, const int64_t* dst,
             const T* w, T* out) {
    for (int64_t j = 0; j < n; ++j) {
        const int64_t d = deg[j];
        gemm<T>(h, k1, 1, q + j * k1 * c, c, d, k1, c, Epilogue<T>{out, c, dst, w});
        h += d * k1;
        dst += d;
        if (w) w += d;
    }
}

// The optional last stage of backward, for Q = x W (W [C_in, K' C], wt = W^T [K' C, C_in]): per block of sources,
// while their dQ is still in cache, dX[node_j] += dQ_j W^T and dW += X_blk^T dQ_blk (xs: the sources' x rows).
template <typename T>
struct NodeAdjoint {
    int64_t cin;
    const T* xs;           // [n, C_in] or nullptr (no dW)
    const T* wt;           // [K' C, C_in] or nullptr (no dX)
    T* gx;                 // [N, C_in], rows nodes[j] added to
    const int64_t* nodes;  // [n]
    T* gw;                 // [C_in, K' C] added to, or nullptr
};

constexpr int64_t kBlock = 24;  // sources per block: their dQ (24 K' C floats, 200 KB at K' = 65, C = 32) stays in L2

template <typename T>
void backward(int64_t n, const int64_t* deg, int64_t k1, int64_t k, int64_t c, const T* h, const T* qt, const T* g,
              const int64_t* dst, const T* w, T* gm, T* gq, T* gh, const NodeAdjoint<T>& na) {
    const int64_t kc = k1 * c;
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
        const int64_t j1 = j0 + kBlock < n ? j0 + kBlock : n;
        for (int64_t j = j0; j < j1; ++j) {
            const int64_t d = deg[j];
            for (int64_t r = 0; r < d; ++r) {  // G_j = w * g[dst]
                const T s = w ? w[r] : T(1);
                const T* gr = g + dst[r] * c;
                T* o = gm + r * c;
                for (int64_t l = 0; l < c; ++l) o[l] = s * gr[l];
            }
            if (gq) gemm<T>(h, 1, k1, gm, c, k1, d, c, Epilogue<T>{gq + j * kc, c, nullptr, nullptr});
            if (gh) gemm<T>(gm, c, 1, qt + j * c * k, k, d, c, k, Epilogue<T>{gh, k, nullptr, nullptr});
            h += d * k1;
            dst += d;
            if (w) w += d;
            if (gh) gh += d * k;
        }
        if (!gq) continue;
        const int64_t nb = j1 - j0;
        const T* gq_blk = gq + j0 * kc;
        if (na.wt)  // dX rows of the block's sources: [nb, K' C] x [K' C, C_in]
            gemm<T>(gq_blk, kc, 1, na.wt, na.cin, nb, kc, na.cin, Epilogue<T>{na.gx, na.cin, na.nodes + j0, nullptr});
        if (na.gw)  // dW += X_blk^T dQ_blk: [C_in, nb] x [nb, K' C]
            gemm<T>(na.xs + j0 * na.cin, 1, na.cin, gq_blk, kc, na.cin, nb, kc,
                    Epilogue<T>{na.gw, kc, nullptr, nullptr, true});
    }
}

}  // namespace

extern "C" {

int dsmpnn_native_abi() { return 2; }

void dsmpnn_forward_f32(int64_t n, const int64_t* deg, int64_t k1, int64_t c, const float* h, const float* q,
                        const int64_t* dst, const float* w, float* out) {
    forward<float>(n, deg, k1, c, h, q, dst, w, out);
}

void dsmpnn_forward_f64(int64_t n, const int64_t* deg, int64_t k1, int64_t c, const double* h, const double* q,
                        const int64_t* dst, const double* w, double* out) {
    forward<double>(n, deg, k1, c, h, q, dst, w, out);
}

void dsmpnn_backward_f32(int64_t n, const int64_t* deg, int64_t k1, int64_t k, int64_t c, const float* h,
                         const float* qt, const float* g, const int64_t* dst, const float* w, float* gm, float* gq,
                         float* gh, int64_t cin, const float* xs, const float* wt, float* gx, const int64_t* nodes,
                         float* gw) {
    backward<float>(n, deg, k1, k, c, h, qt, g, dst, w, gm, gq, gh, NodeAdjoint<float>{cin, xs, wt, gx, nodes, gw});
}

void dsmpnn_backward_f64(int64_t n, const int64_t* deg, int64_t k1, int64_t k, int64_t c, const double* h,
                         const double* qt, const double* g, const int64_t* dst, const double* w, double* gm,
                         double* gq, double* gh, int64_t cin, const double* xs, const double* wt, double* gx,
                         const int64_t* nodes, double* gw) {
    backward<double>(n, deg, k1, k, c, h, qt, g, dst, w, gm, gq, gh,
                     NodeAdjoint<double>{cin, xs, wt, gx, nodes, gw});
}

}  // extern "C"
