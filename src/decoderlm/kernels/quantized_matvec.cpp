// Int8 and int4 weight-only matrix-vector products for decoding on CPU (a few rows of activations
// against a whole weight matrix), hand-written because torch's kernels for these formats
// (_weight_int8pack_mm, _weight_int4pack_mm_for_cpu) run far below the memory bandwidth at batch 1
// (docs/generation.md). Needs AVX-512 with BF16; native.py builds this file only where
// the CPU has both, quantized_matvec_avx2.cpp where it has AVX2, and uses torch's kernels elsewhere.
//
// Both kernels walk the weights once, in the order they lie in memory, a block of 4 output rows
// at a time (4 independent sums hide the latency of each multiply-add), and ask for the next block
// ahead of time (_mm_prefetch): without that the stream of weights stalls at a fraction of the
// bandwidth. The op schemas are declared in Python (native.py); this file implements them.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include "matvec_common.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

using decoderlm_kernels::kBlock;
using decoderlm_kernels::over_output_rows;

float bf16_to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// ---- int8: w[n, k] = q[n, k] * scale[n] --------------------------------------------------------

// Rows n .. n+R-1 of y[m] for every m < M; x holds the M activation rows in float32.
template <int R>
void int8_block(const float* x, int64_t M, int64_t K, const int8_t* q, const c10::BFloat16* scale,
                c10::BFloat16* y, int64_t N, int64_t n) {
  for (int64_t m = 0; m < M; ++m) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      if (m == 0) _mm_prefetch(reinterpret_cast<const char*>(q + (n + R) * K + R * k), _MM_HINT_T0);
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < R; ++r) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + (n + r) * K + k));
        acc[r] = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[r]) * bf16_to_float(scale[n + r]);
  }
}

at::Tensor int8_matvec(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales) {
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  decoderlm_kernels::check_int8_args(x, q, scales);
  std::vector<float> xf(M * K);
  const auto* xb = x.const_data_ptr<c10::BFloat16>();
  for (int64_t i = 0; i < M * K; ++i) xf[i] = bf16_to_float(xb[i]);
  at::Tensor y = at::empty({M, N}, x.options());
  const auto* qp = q.const_data_ptr<int8_t>();
  const auto* sp = scales.const_data_ptr<c10::BFloat16>();
  auto* yp = y.mutable_data_ptr<c10::BFloat16>();
  over_output_rows(
      N, [&](int64_t n) { int8_block<kBlock>(xf.data(), M, K, qp, sp, yp, N, n); },
      [&](int64_t n) { int8_block<1>(xf.data(), M, K, qp, sp, yp, N, n); });
  return y;
}

// ---- int4: w[n, k] = scale[n, g] * (q[n, k] - 8) + zero[n, g], g = k / group ------------------
// q is stored (N, K/2): byte j of a row holds column 2j in its low nibble and 2j+1 in its high one.
// The bf16 number whose bits are 0x4300 | v is exactly 128 + v for v in 0..15, so one OR turns a
// nibble into a bf16 and vdpbf16ps multiplies 32 of them by x per instruction; the extra
// 128 * sum(x over the group) this adds (and the -8) are taken off with the group's x sum.

struct Int4Problem {  // one call: M activation rows against N x K weights, as the kernel reads them
  int64_t M, K, N, group, groups, row_bytes;
  const uint8_t* q;
  const uint16_t* scales;  // bf16 bits, (N, groups)
  const uint16_t* zeros;
  const uint16_t* x_even;  // (M, K/2): bf16 bits of x's even columns
  const uint16_t* x_odd;   // (M, K/2): and of its odd ones
  const float* x_sums;     // (M, groups): x summed over each group of columns
  c10::BFloat16* y;        // (M, N)
};

// bf16 bits -> float32, 16 at a time (a bf16 is the top half of a float32)
__m512 bf16_bits_to_float(__mmask16 lanes, const uint16_t* bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, bits)), 16));
}

// Rows n .. n+R-1 of y, one specialised copy per R. Everything a block needs comes ready in `p`,
// computed once per call: a block is small (4 rows), so work repeated per block adds up. HALF: a
// group's bytes in a row when fixed at compile time (32 for groups of 64), else 0 (from p.group).
template <int R, int HALF>
inline __attribute__((always_inline)) void int4_rows(const Int4Problem& p, int64_t n) {
  const __m512i low_nibble = _mm512_set1_epi16(15), bf16_128 = _mm512_set1_epi16(0x4300);
  const int64_t half = HALF ? HALF : p.group / 2;
  const uint8_t* rows = p.q + n * p.row_bytes;
  for (int64_t m = 0; m < p.M; ++m) {
    const uint16_t* x_even = p.x_even + m * (p.K / 2);
    const uint16_t* x_odd = p.x_odd + m * (p.K / 2);
    __m512 total[R], offset[R];
    for (int r = 0; r < R; ++r) total[r] = offset[r] = _mm512_setzero_ps();
    // The groups' scales and zero terms 16 groups at a time, in vector registers: converting them one
    // by one and summing the zero terms in a scalar chain cost more than the multiply-adds.
    for (int64_t g0 = 0; g0 < p.groups; g0 += 16) {
      const int64_t count = std::min<int64_t>(16, p.groups - g0);
      const __mmask16 lanes = __mmask16((1u << count) - 1);
      const __m512 x_sums = _mm512_maskz_loadu_ps(lanes, p.x_sums + m * p.groups + g0);
      alignas(64) float scale[R][16];
      for (int r = 0; r < R; ++r) {
        const int64_t at = (n + r) * p.groups + g0;
        const __m512 s = bf16_bits_to_float(lanes, p.scales + at), z = bf16_bits_to_float(lanes, p.zeros + at);
        // what the 0x4300 trick adds (128 per weight) and the -8, with the zero, times sum(x)
        offset[r] = _mm512_fmadd_ps(_mm512_fnmadd_ps(_mm512_set1_ps(128 + 8), s, z), x_sums, offset[r]);
        _mm512_store_ps(scale[r], s);
      }
      for (int64_t g = g0; g < g0 + count; ++g) {
        __m512 part[R];
        for (int r = 0; r < R; ++r) part[r] = _mm512_setzero_ps();
        for (int64_t j = g * half; j < (g + 1) * half; j += 32) {
          if (m == 0) {
            const char* next = reinterpret_cast<const char*>(rows + R * p.row_bytes + R * j);
            _mm_prefetch(next, _MM_HINT_T0);
            _mm_prefetch(next + 64, _MM_HINT_T0);
          }
          const __m512bh even = (__m512bh)_mm512_loadu_si512(x_even + j);
          const __m512bh odd = (__m512bh)_mm512_loadu_si512(x_odd + j);
          for (int r = 0; r < R; ++r) {
            const auto* bytes = reinterpret_cast<const __m256i*>(rows + r * p.row_bytes + j);
            const __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(bytes));
            const __m512i lo = _mm512_ternarylogic_epi32(b, low_nibble, bf16_128, 0xEA);  // (b & 15) | 0x4300
            const __m512i hi = _mm512_or_si512(_mm512_srli_epi16(b, 4), bf16_128);
            part[r] = _mm512_dpbf16_ps(part[r], even, (__m512bh)lo);
            part[r] = _mm512_dpbf16_ps(part[r], odd, (__m512bh)hi);
          }
        }
        for (int r = 0; r < R; ++r) total[r] = _mm512_fmadd_ps(_mm512_set1_ps(scale[r][g - g0]), part[r], total[r]);
      }
    }
    for (int r = 0; r < R; ++r) p.y[m * p.N + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(total[r], offset[r]));
  }
}

at::Tensor int4_matvec(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zeros,
                       int64_t group_size) {
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  decoderlm_kernels::check_int4_args(x, q, scales, zeros, group_size);
  const int64_t groups = K / group_size;
  // The activations laid out for the kernel, in buffers this thread keeps for its later calls; the
  // threads of parallel_for reach them only through `p` (by name they would see their own, empty).
  thread_local std::vector<uint16_t> words;
  thread_local std::vector<float> sums;
  words.resize(M * K);
  sums.assign(M * groups, 0.f);
  uint16_t* x_even = words.data();
  uint16_t* x_odd = words.data() + M * K / 2;
  const auto* xb = x.const_data_ptr<c10::BFloat16>();
  for (int64_t m = 0; m < M; ++m) {  // 32 columns at a time: 16 (even, odd) pairs of bf16 bits
    for (int64_t k = 0; k < K; k += 32) {
      const __m512i pairs = _mm512_loadu_si512(xb + m * K + k);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(x_even + (m * K + k) / 2), _mm512_cvtepi32_epi16(pairs));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(x_odd + (m * K + k) / 2),
                          _mm512_cvtepi32_epi16(_mm512_srli_epi32(pairs, 16)));
      // the even bf16 shifted up to a float32, the odd one with the even cleared
      const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
      const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(int32_t(0xFFFF0000))));
      sums[m * groups + k / group_size] += _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
    }
  }
  at::Tensor y = at::empty({M, N}, x.options());
  const Int4Problem p{M, K, N, group_size, groups, K / 2, q.const_data_ptr<uint8_t>(),
                      reinterpret_cast<const uint16_t*>(scales.const_data_ptr<c10::BFloat16>()),
                      reinterpret_cast<const uint16_t*>(zeros.const_data_ptr<c10::BFloat16>()),
                      x_even, x_odd, sums.data(), y.mutable_data_ptr<c10::BFloat16>()};
  decoderlm_kernels::over_int4_output_rows(
      N, group_size, [&](auto R, auto HALF, int64_t n) { int4_rows<decltype(R)::value, decltype(HALF)::value>(p, n); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(decoderlm, CPU, m) {
  m.impl("int8_matvec", &int8_matvec);
  m.impl("int4_matvec", &int4_matvec);
}
