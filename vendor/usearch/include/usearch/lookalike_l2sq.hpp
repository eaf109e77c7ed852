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

/// `query`, four vectors, the dimensions; writes the four squared Euclidean distances.
using l2sq_x4_kernel_t = void (*)(void const* query, void const* const* vectors, std::size_t n, float* out);

#if LOOKALIKE_L2SQ_X86

/// Sixteen halves at `p` widened to f32.
__attribute__((target("avx512f"))) inline __m512 load_f16x16_avx512(std::uint16_t const* p) noexcept {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<__m256i const*>(p)));
}

/// Eight halves at `p` widened to f32.
__attribute__((target("avx2,f16c"))) inline __m256 load_f16x8_avx2(std::uint16_t const* p) noexcept {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<__m128i const*>(p)));
}

// What the kernels below read through: a register of f32 at `p + i` (`tail`: the last `n - i`
// elements, fewer than a register, the rest zero), one type per stored form and instruction set.

struct f32x16_avx512_t {
    static constexpr std::size_t lanes = 16;
    __attribute__((target("avx512f"))) __m512 operator()(void const* p, std::size_t i) const noexcept {
        return _mm512_loadu_ps(static_cast<float const*>(p) + i);
    }
    __attribute__((target("avx512f"))) __m512 tail(void const* p, std::size_t i, std::size_t n) const noexcept {
        return _mm512_maskz_loadu_ps((__mmask16)((1u << (n - i)) - 1u), static_cast<float const*>(p) + i);
    }
};

struct f16x16_avx512_t {
    static constexpr std::size_t lanes = 16;
    __attribute__((target("avx512f"))) __m512 operator()(void const* p, std::size_t i) const noexcept {
        return load_f16x16_avx512(static_cast<std::uint16_t const*>(p) + i);
    }
    /// Through a zeroed buffer: a masked 16-bit load needs AVX-512BW.
    __attribute__((target("avx512f"))) __m512 tail(void const* p, std::size_t i, std::size_t n) const noexcept {
        std::uint16_t t[16] = {0};
        std::memcpy(t, static_cast<std::uint16_t const*>(p) + i, (n - i) * sizeof(std::uint16_t));
        return load_f16x16_avx512(t);
    }
};

struct f32x8_avx2_t {
    static constexpr std::size_t lanes = 8;
    __attribute__((target("avx2"))) __m256 operator()(void const* p, std::size_t i) const noexcept {
        return _mm256_loadu_ps(static_cast<float const*>(p) + i);
    }
    __attribute__((target("avx2"))) __m256 tail(void const* p, std::size_t i, std::size_t n) const noexcept {
        float t[8] = {0};
        std::memcpy(t, static_cast<float const*>(p) + i, (n - i) * sizeof(float));
        return _mm256_loadu_ps(t);
    }
};

struct f16x8_avx2_t {
    static constexpr std::size_t lanes = 8;
    __attribute__((target("avx2,f16c"))) __m256 operator()(void const* p, std::size_t i) const noexcept {
        return load_f16x8_avx2(static_cast<std::uint16_t const*>(p) + i);
    }
    __attribute__((target("avx2,f16c"))) __m256 tail(void const* p, std::size_t i, std::size_t n) const noexcept {
        std::uint16_t t[8] = {0};
        std::memcpy(t, static_cast<std::uint16_t const*>(p) + i, (n - i) * sizeof(std::uint16_t));
        return load_f16x8_avx2(t);
    }
};

__attribute__((target("avx2,fma"))) inline float reduce_f32x8_avx2(__m256 v) noexcept {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/// One distance, four registers of sums taking turns, in the punned signature.
template <typename load_at>
__attribute__((target("avx512f,fma"))) inline float l2sq_avx512(std::size_t a_addr, std::size_t b_addr,
                                                                  std::size_t n) noexcept {
    load_at load;
    void const* a = reinterpret_cast<void const*>(a_addr);
    void const* b = reinterpret_cast<void const*>(b_addr);
    __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k != 4; ++k) {
            __m512 d = _mm512_sub_ps(load(a, i + 16 * k), load(b, i + 16 * k));
            s[k] = _mm512_fmadd_ps(d, d, s[k]);
        }
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(load(a, i), load(b, i));
        s[0] = _mm512_fmadd_ps(d, d, s[0]);
    }
    if (i < n) {
        __m512 d = _mm512_sub_ps(load.tail(a, i, n), load.tail(b, i, n));
        s[1] = _mm512_fmadd_ps(d, d, s[1]);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
}

/// The same with eight lanes.
template <typename load_at>
__attribute__((target("avx2,fma,f16c"))) inline float l2sq_avx2(std::size_t a_addr, std::size_t b_addr,
                                                                  std::size_t n) noexcept {
    load_at load;
    void const* a = reinterpret_cast<void const*>(a_addr);
    void const* b = reinterpret_cast<void const*>(b_addr);
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k != 4; ++k) {
            __m256 d = _mm256_sub_ps(load(a, i + 8 * k), load(b, i + 8 * k));
            s[k] = _mm256_fmadd_ps(d, d, s[k]);
        }
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(load(a, i), load(b, i));
        s[0] = _mm256_fmadd_ps(d, d, s[0]);
    }
    if (i < n) {
        __m256 d = _mm256_sub_ps(load.tail(a, i, n), load.tail(b, i, n));
        s[1] = _mm256_fmadd_ps(d, d, s[1]);
    }
    return reduce_f32x8_avx2(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
}

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

/// What this CPU gets for one stored form: the one-pair kernel (null where none applies:
/// NumKong's then), the four-vector kernel (null: the search measures one at a time), and the
/// name of their instruction set.
struct l2sq_kernels_t {
    l2sq_kernel_t one = nullptr;
    l2sq_x4_kernel_t four = nullptr;
    char const* isa = nullptr;
};

/// The kernels for f32 (`half` false) or f16 (`half` true) vectors. Each can be switched off
/// from the environment, for measuring what it buys: `USEARCH_NUMKONG_L2SQ` (NumKong's, one at
/// a time), `USEARCH_NO_BATCH4` (one at a time), `USEARCH_NO_AVX512` (the AVX2 kernels, so
/// that they are tested on machines with both).
inline l2sq_kernels_t l2sq_kernels(bool half) noexcept {
    static bool const numkong = std::getenv("USEARCH_NUMKONG_L2SQ") != nullptr;
    static bool const no_batch4 = std::getenv("USEARCH_NO_BATCH4") != nullptr;
    static bool const no_avx512 = std::getenv("USEARCH_NO_AVX512") != nullptr;
    l2sq_kernels_t kernels;
    if (numkong)
        return kernels;
#if LOOKALIKE_L2SQ_X86
    __builtin_cpu_init();
    if (!no_avx512 && __builtin_cpu_supports("avx512f")) {
        kernels.one = half ? &l2sq_avx512<f16x16_avx512_t> : &l2sq_avx512<f32x16_avx512_t>;
        if (!no_batch4)
            kernels.four = half ? &l2sq_x4_avx512<f16x16_avx512_t> : &l2sq_x4_avx512<f32x16_avx512_t>;
        kernels.isa = "lookalike-avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        kernels.one = half ? &l2sq_avx2<f16x8_avx2_t> : &l2sq_avx2<f32x8_avx2_t>;
        kernels.isa = "lookalike-avx2";
    }
#endif
    (void)half;
    (void)no_batch4;
    (void)no_avx512;
    return kernels;
}

} // namespace lookalike
} // namespace usearch
} // namespace unum
