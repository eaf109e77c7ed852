/**
 *  @file       lookalike_l2sq.hpp
 *  @brief      lookalike: squared Euclidean distance kernels for f32 and f16 vectors with four
 *              independent accumulators, chosen at run time for the CPU (AVX-512, AVX2, or plain).
 *
 *  NumKong's kernels (usearch's default) add every product into one register: each fused
 *  multiply-add waits for the one before it (four cycles), and its f32 kernels widen to f64,
 *  so half the lanes. Here four registers take turns, so the multiply-adds of one distance
 *  overlap, and the sums stay in f32 (as FAISS keeps them). The kernels take the punned
 *  signature `metric_punned_t` calls: two vector addresses and the dimensions.
 */
#pragma once

#include <cstddef> // `std::size_t`
#include <cstdint> // `std::uint16_t`
#include <cstdlib> // `std::getenv`
#include <cstring> // `std::memcpy`

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define LOOKALIKE_L2SQ_X86 1
#include <immintrin.h>
#else
#define LOOKALIKE_L2SQ_X86 0
#endif

namespace unum {
namespace usearch {
namespace lookalike {

/// `a`, `b`: vector addresses; `n`: dimensions. Returns the squared Euclidean distance.
using l2sq_kernel_t = float (*)(std::size_t a, std::size_t b, std::size_t n);

#if LOOKALIKE_L2SQ_X86

__attribute__((target("avx512f,fma"))) inline float l2sq_f32_avx512(std::size_t a_addr, std::size_t b_addr,
                                                                      std::size_t n) noexcept {
    float const* a = reinterpret_cast<float const*>(a_addr);
    float const* b = reinterpret_cast<float const*>(b_addr);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
        __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        s2 = _mm512_fmadd_ps(d2, d2, s2);
        s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (n - i)) - 1u);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i));
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/// Sixteen halves at `p` widened to f32.
__attribute__((target("avx512f"))) inline __m512 load_f16x16_avx512(std::uint16_t const* p) noexcept {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<__m256i const*>(p)));
}

__attribute__((target("avx512f,fma"))) inline float l2sq_f16_avx512(std::size_t a_addr, std::size_t b_addr,
                                                                      std::size_t n) noexcept {
    std::uint16_t const* a = reinterpret_cast<std::uint16_t const*>(a_addr);
    std::uint16_t const* b = reinterpret_cast<std::uint16_t const*>(b_addr);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 d0 = _mm512_sub_ps(load_f16x16_avx512(a + i), load_f16x16_avx512(b + i));
        __m512 d1 = _mm512_sub_ps(load_f16x16_avx512(a + i + 16), load_f16x16_avx512(b + i + 16));
        __m512 d2 = _mm512_sub_ps(load_f16x16_avx512(a + i + 32), load_f16x16_avx512(b + i + 32));
        __m512 d3 = _mm512_sub_ps(load_f16x16_avx512(a + i + 48), load_f16x16_avx512(b + i + 48));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        s2 = _mm512_fmadd_ps(d2, d2, s2);
        s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(load_f16x16_avx512(a + i), load_f16x16_avx512(b + i));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    if (i < n) {
        // The last few halves, through zeroed buffers (a masked 16-bit load needs AVX-512BW).
        std::uint16_t ta[16] = {0}, tb[16] = {0};
        std::memcpy(ta, a + i, (n - i) * sizeof(std::uint16_t));
        std::memcpy(tb, b + i, (n - i) * sizeof(std::uint16_t));
        __m512 d = _mm512_sub_ps(load_f16x16_avx512(ta), load_f16x16_avx512(tb));
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target("avx2,fma"))) inline float reduce_f32x8_avx2(__m256 v) noexcept {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline float l2sq_f32_avx2(std::size_t a_addr, std::size_t b_addr,
                                                                 std::size_t n) noexcept {
    float const* a = reinterpret_cast<float const*>(a_addr);
    float const* b = reinterpret_cast<float const*>(b_addr);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
        __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    float sum = reduce_f32x8_avx2(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; ++i) {
        float d = a[i] - b[i];
        sum += d * d;
    }
    return sum;
}

/// Eight halves at `p` widened to f32.
__attribute__((target("avx2,f16c"))) inline __m256 load_f16x8_avx2(std::uint16_t const* p) noexcept {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<__m128i const*>(p)));
}

__attribute__((target("avx2,fma,f16c"))) inline float l2sq_f16_avx2(std::size_t a_addr, std::size_t b_addr,
                                                                      std::size_t n) noexcept {
    std::uint16_t const* a = reinterpret_cast<std::uint16_t const*>(a_addr);
    std::uint16_t const* b = reinterpret_cast<std::uint16_t const*>(b_addr);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 d0 = _mm256_sub_ps(load_f16x8_avx2(a + i), load_f16x8_avx2(b + i));
        __m256 d1 = _mm256_sub_ps(load_f16x8_avx2(a + i + 8), load_f16x8_avx2(b + i + 8));
        __m256 d2 = _mm256_sub_ps(load_f16x8_avx2(a + i + 16), load_f16x8_avx2(b + i + 16));
        __m256 d3 = _mm256_sub_ps(load_f16x8_avx2(a + i + 24), load_f16x8_avx2(b + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(load_f16x8_avx2(a + i), load_f16x8_avx2(b + i));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    if (i < n) {
        std::uint16_t ta[8] = {0}, tb[8] = {0};
        std::memcpy(ta, a + i, (n - i) * sizeof(std::uint16_t));
        std::memcpy(tb, b + i, (n - i) * sizeof(std::uint16_t));
        __m256 d = _mm256_sub_ps(load_f16x8_avx2(ta), load_f16x8_avx2(tb));
        s1 = _mm256_fmadd_ps(d, d, s1);
    }
    return reduce_f32x8_avx2(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/// Loads for the four-vector kernel: sixteen f32 at `p + i` (`tail`: the last `n - i` < 16).
struct f32x16_avx512_t {
    __attribute__((target("avx512f"))) __m512 operator()(void const* p, std::size_t i) const noexcept {
        return _mm512_loadu_ps(static_cast<float const*>(p) + i);
    }
    __attribute__((target("avx512f"))) __m512 tail(void const* p, std::size_t i, std::size_t n) const noexcept {
        return _mm512_maskz_loadu_ps((__mmask16)((1u << (n - i)) - 1u), static_cast<float const*>(p) + i);
    }
};

/// Loads for the four-vector kernel: sixteen halves at `p + i` widened to f32.
struct f16x16_avx512_t {
    __attribute__((target("avx512f"))) __m512 operator()(void const* p, std::size_t i) const noexcept {
        return load_f16x16_avx512(static_cast<std::uint16_t const*>(p) + i);
    }
    __attribute__((target("avx512f"))) __m512 tail(void const* p, std::size_t i, std::size_t n) const noexcept {
        std::uint16_t t[16] = {0};
        std::memcpy(t, static_cast<std::uint16_t const*>(p) + i, (n - i) * sizeof(std::uint16_t));
        return load_f16x16_avx512(t);
    }
};

/// The distances from `query` to four vectors at once (FAISS's `distances_batch_4`): each
/// query register is loaded once for all four, and the four vectors stream from memory side
/// by side. Two accumulators a vector.
template <typename load_at>
__attribute__((target("avx512f,fma"))) inline void l2sq_x4_avx512(void const* query, void const* const* vectors,
                                                                    std::size_t n, float* out) noexcept {
    load_at load;
    __m512 a[4], b[4];
    for (int k = 0; k != 4; ++k)
        a[k] = _mm512_setzero_ps(), b[k] = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 x = load(query, i), y = load(query, i + 16);
        for (int k = 0; k != 4; ++k) {
            __m512 d = _mm512_sub_ps(x, load(vectors[k], i));
            __m512 e = _mm512_sub_ps(y, load(vectors[k], i + 16));
            a[k] = _mm512_fmadd_ps(d, d, a[k]);
            b[k] = _mm512_fmadd_ps(e, e, b[k]);
        }
    }
    if (i + 16 <= n) {
        __m512 x = load(query, i);
        for (int k = 0; k != 4; ++k) {
            __m512 d = _mm512_sub_ps(x, load(vectors[k], i));
            a[k] = _mm512_fmadd_ps(d, d, a[k]);
        }
        i += 16;
    }
    if (i < n) {
        __m512 x = load.tail(query, i, n);
        for (int k = 0; k != 4; ++k) {
            __m512 d = _mm512_sub_ps(x, load.tail(vectors[k], i, n));
            b[k] = _mm512_fmadd_ps(d, d, b[k]);
        }
    }
    for (int k = 0; k != 4; ++k)
        out[k] = _mm512_reduce_add_ps(_mm512_add_ps(a[k], b[k]));
}

#endif // LOOKALIKE_L2SQ_X86

/// Whether `USEARCH_NUMKONG_L2SQ` is unset in the environment (set, NumKong's kernels are
/// used as published, for measuring what these buy).
inline bool l2sq_enabled() noexcept {
    static bool const on = std::getenv("USEARCH_NUMKONG_L2SQ") == nullptr;
    return on;
}

/// Whether AVX-512 may be used where the CPU has it (`USEARCH_NO_AVX512` set: the AVX2
/// kernels, so that they are tested on machines with both).
inline bool avx512_allowed() noexcept {
    static bool const on = std::getenv("USEARCH_NO_AVX512") == nullptr;
    return on;
}

/// `query`, four vectors, the dimensions; writes the four squared Euclidean distances.
using l2sq_x4_kernel_t = void (*)(void const* query, void const* const* vectors, std::size_t n, float* out);

/// The four-vector kernel for this CPU, or null (then the search measures one at a time).
/// `USEARCH_NO_BATCH4` set in the environment leaves it null, for measuring what it buys.
inline l2sq_x4_kernel_t l2sq_x4_kernel(bool half) noexcept {
    static bool const on = std::getenv("USEARCH_NO_BATCH4") == nullptr;
    if (!on || !l2sq_enabled())
        return nullptr;
#if LOOKALIKE_L2SQ_X86
    __builtin_cpu_init();
    if (avx512_allowed() && __builtin_cpu_supports("avx512f"))
        return half ? &l2sq_x4_avx512<f16x16_avx512_t> : &l2sq_x4_avx512<f32x16_avx512_t>;
#endif
    (void)half;
    return nullptr;
}

/// The fastest kernel this CPU runs for f32 (`half` false) or f16 (`half` true) vectors, with
/// the name of its instruction set; a null kernel where none applies (NumKong's then).
inline l2sq_kernel_t l2sq_kernel(bool half, char const** isa) noexcept {
    if (!l2sq_enabled())
        return nullptr;
#if LOOKALIKE_L2SQ_X86
    __builtin_cpu_init();
    if (avx512_allowed() && __builtin_cpu_supports("avx512f")) {
        *isa = "lookalike-avx512";
        return half ? &l2sq_f16_avx512 : &l2sq_f32_avx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *isa = "lookalike-avx2";
        return half ? &l2sq_f16_avx2 : &l2sq_f32_avx2;
    }
#endif
    (void)half;
    (void)isa;
    return nullptr;
}

} // namespace lookalike
} // namespace usearch
} // namespace unum
