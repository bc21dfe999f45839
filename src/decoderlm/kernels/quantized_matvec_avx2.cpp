// The int8 and int4 matrix-vector products of quantized_matvec.cpp, for CPUs with AVX2 and FMA but
// not AVX-512 BF16 (most laptops, and AMD before Zen 4). The same ops and layouts; native.py builds
// one of the two files, by what the CPU has. Hand-written for the same reason: torch's kernels for
// these formats gain little over bf16 at batch 1 on such CPUs (docs/benchmarks.md).
//
// Without a bf16 dot-product instruction, the products run in integers: each activation row is
// turned into 16-bit fixed point (one scale per row: its largest value becomes 32767), and
// vpmaddwd multiplies 16 weights by 16 activations and adds them in pairs, in half the instructions
// that converting every weight to float32 takes. A bf16 activation carries 8 significant bits, so
// the rounding this adds (at most 1/65534 of the row's largest value) is smaller than bf16's own
// rounding of that value; docs/generation.md has the measured difference.

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

float sum8(__m256 v) {
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

// 8 bf16 values -> 8 float32 (a bf16 is the top half of a float32)
__m256 bf16x8_to_float(const c10::BFloat16* values) {
  const __m128i words = _mm_loadu_si128(reinterpret_cast<const __m128i*>(values));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(words), 16));
}

// 16 floats (a, then b) times `inverse`, rounded to 16 int16 in their order
__m256i to_int16(__m256 a, __m256 b, __m256 inverse) {
  const __m256i packed = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(a, inverse)),
                                            _mm256_cvtps_epi32(_mm256_mul_ps(b, inverse)));
  return _mm256_permute4x64_epi64(packed, 0xD8);  // packs interleaves the 128-bit halves; undo it
}

// The scale that maps a row's largest |value| to 32767 (1 for a row of zeros).
float fixed_point_scale(const c10::BFloat16* row, int64_t K) {
  __m256 largest = _mm256_setzero_ps();
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t k = 0; k < K; k += 8) largest = _mm256_max_ps(largest, _mm256_and_ps(bf16x8_to_float(row + k), magnitude));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, largest);
  const float top = *std::max_element(lanes, lanes + 8);
  return top > 0.f ? top / 32767.f : 1.f;
}

// ---- int8: w[n, k] = q[n, k] * scale[n] --------------------------------------------------------

constexpr int64_t kInt8Chunk = 2048;  // columns summed in int32 before moving to float: no overflow
                                      // (128 steps of 2 * 127 * 32767 per lane stay below 2^31)

// Rows n .. n+R-1 of y[m] for every m < M; x holds the M activation rows in int16, x_scale their scales.
template <int R>
void int8_block(const int16_t* x, const float* x_scale, int64_t M, int64_t K, const int8_t* q,
                const c10::BFloat16* scale, c10::BFloat16* y, int64_t N, int64_t n) {
  for (int64_t m = 0; m < M; ++m) {
    __m256 total[R];
    for (int r = 0; r < R; ++r) total[r] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += kInt8Chunk) {
      __m256i sum[R];
      for (int r = 0; r < R; ++r) sum[r] = _mm256_setzero_si256();
      for (int64_t k = k0; k < std::min(K, k0 + kInt8Chunk); k += 16) {
        if (m == 0) _mm_prefetch(reinterpret_cast<const char*>(q + (n + R) * K + R * k), _MM_HINT_T0);
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * K + k));
        for (int r = 0; r < R; ++r) {
          const auto* bytes = reinterpret_cast<const __m128i*>(q + (n + r) * K + k);
          sum[r] = _mm256_add_epi32(sum[r], _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(bytes)), xv));
        }
      }
      for (int r = 0; r < R; ++r) total[r] = _mm256_add_ps(total[r], _mm256_cvtepi32_ps(sum[r]));
    }
    for (int r = 0; r < R; ++r) {
      y[m * N + n + r] = sum8(total[r]) * x_scale[m] * static_cast<float>(scale[n + r]);
    }
  }
}

at::Tensor int8_matvec(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales) {
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  decoderlm_kernels::check_int8_args(x, q, scales);
  // The activations in fixed point, in buffers this thread keeps for its later calls; the threads of
  // parallel_for reach them only through the pointers passed below.
  thread_local std::vector<int16_t> fixed;
  thread_local std::vector<float> x_scale;
  fixed.resize(M * K);
  x_scale.resize(M);
  const auto* xb = x.const_data_ptr<c10::BFloat16>();
  for (int64_t m = 0; m < M; ++m) {
    x_scale[m] = fixed_point_scale(xb + m * K, K);
    const __m256 inverse = _mm256_set1_ps(1.f / x_scale[m]);
    for (int64_t k = 0; k < K; k += 16) {
      const c10::BFloat16* at = xb + m * K + k;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(fixed.data() + m * K + k),
                          to_int16(bf16x8_to_float(at), bf16x8_to_float(at + 8), inverse));
    }
  }
  at::Tensor y = at::empty({M, N}, x.options());
  const int16_t* xp = fixed.data();
  const float* sx = x_scale.data();
  const auto* qp = q.const_data_ptr<int8_t>();
  const auto* sp = scales.const_data_ptr<c10::BFloat16>();
  auto* yp = y.mutable_data_ptr<c10::BFloat16>();
  over_output_rows(
      N, [&](int64_t n) { int8_block<kBlock>(xp, sx, M, K, qp, sp, yp, N, n); },
      [&](int64_t n) { int8_block<1>(xp, sx, M, K, qp, sp, yp, N, n); });
  return y;
}

// ---- int4: w[n, k] = scale[n, g] * (q[n, k] - 8) + zero[n, g], g = k / group ------------------
// q is stored (N, K/2): byte j of a row holds column 2j in its low nibble and 2j+1 in its high one,
// so the activations come split into their even and odd columns. Per group,
// sum_k w x = scale * sum_k q x + (zero - 8 * scale) * sum_k x: the nibbles are multiplied as they
// are, and the group's x sum (computed once per call, in float) adds the rest.

struct Int4Problem {  // one call: M activation rows against N x K weights, as the kernel reads them
  int64_t M, K, N, group, groups, row_bytes;
  const uint8_t* q;
  const c10::BFloat16* scales;  // (N, groups)
  const c10::BFloat16* zeros;
  const int16_t* x_even;  // (M, K/2): x's even columns in fixed point
  const int16_t* x_odd;   // (M, K/2): and its odd ones
  const float* x_scale;   // (M): the fixed point's scale of each row
  const float* x_sums;    // (M, groups): x summed over each group of columns
  c10::BFloat16* y;       // (M, N)
};

// Rows n .. n+R-1 of y. HALF: a group's bytes in a row when fixed at compile time (32 for groups of
// 64), else 0 (from p.group).
template <int R, int HALF>
void int4_rows(const Int4Problem& p, int64_t n) {
  const __m256i low_nibble = _mm256_set1_epi16(15);
  const int64_t half = HALF ? HALF : p.group / 2;
  const uint8_t* rows = p.q + n * p.row_bytes;
  for (int64_t m = 0; m < p.M; ++m) {
    const int16_t* x_even = p.x_even + m * (p.K / 2);
    const int16_t* x_odd = p.x_odd + m * (p.K / 2);
    __m256 total[R];
    float offset[R];
    for (int r = 0; r < R; ++r) total[r] = _mm256_setzero_ps(), offset[r] = 0.f;
    for (int64_t g = 0; g < p.groups; ++g) {
      __m256i sum[R];  // a group's sum stays far below 2^31: nibbles are at most 15
      for (int r = 0; r < R; ++r) sum[r] = _mm256_setzero_si256();
      for (int64_t j = g * half; j < (g + 1) * half; j += 16) {
        if (m == 0) {  // the next block, at R times this block's pace
          _mm_prefetch(reinterpret_cast<const char*>(rows + R * p.row_bytes + R * j), _MM_HINT_T0);
        }
        const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_even + j));
        const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_odd + j));
        for (int r = 0; r < R; ++r) {
          const auto* bytes = reinterpret_cast<const __m128i*>(rows + r * p.row_bytes + j);
          const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(bytes));
          sum[r] = _mm256_add_epi32(sum[r], _mm256_madd_epi16(_mm256_and_si256(b, low_nibble), xe));
          sum[r] = _mm256_add_epi32(sum[r], _mm256_madd_epi16(_mm256_srli_epi16(b, 4), xo));
        }
      }
      const float x_sum = p.x_sums[m * p.groups + g];
      for (int r = 0; r < R; ++r) {
        const float scale = static_cast<float>(p.scales[(n + r) * p.groups + g]);
        const float zero = static_cast<float>(p.zeros[(n + r) * p.groups + g]);
        total[r] = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(sum[r]), total[r]);
        offset[r] += (zero - 8.f * scale) * x_sum;
      }
    }
    for (int r = 0; r < R; ++r) p.y[m * p.N + n + r] = sum8(total[r]) * p.x_scale[m] + offset[r];
  }
}

at::Tensor int4_matvec(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zeros,
                       int64_t group_size) {
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  decoderlm_kernels::check_int4_args(x, q, scales, zeros, group_size);
  const int64_t groups = K / group_size;
  // The activations laid out for the kernel, in buffers this thread keeps for its later calls; the
  // threads of parallel_for reach them only through `p` (by name they would see their own, empty).
  thread_local std::vector<int16_t> columns;
  thread_local std::vector<float> x_scale, sums;
  columns.resize(M * K);
  x_scale.resize(M);
  sums.assign(M * groups, 0.f);
  int16_t* x_even = columns.data();
  int16_t* x_odd = columns.data() + M * K / 2;
  const auto* xb = x.const_data_ptr<c10::BFloat16>();
  const __m256i high_half = _mm256_set1_epi32(int32_t(0xFFFF0000));
  for (int64_t m = 0; m < M; ++m) {
    x_scale[m] = fixed_point_scale(xb + m * K, K);
    const __m256 inverse = _mm256_set1_ps(1.f / x_scale[m]);
    for (int64_t k = 0; k < K; k += 32) {  // 16 (even, odd) pairs at a time
      const auto* pairs = reinterpret_cast<const __m256i*>(xb + m * K + k);
      const __m256i first = _mm256_loadu_si256(pairs), second = _mm256_loadu_si256(pairs + 1);
      const __m256 even0 = _mm256_castsi256_ps(_mm256_slli_epi32(first, 16));
      const __m256 even1 = _mm256_castsi256_ps(_mm256_slli_epi32(second, 16));
      const __m256 odd0 = _mm256_castsi256_ps(_mm256_and_si256(first, high_half));
      const __m256 odd1 = _mm256_castsi256_ps(_mm256_and_si256(second, high_half));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(x_even + (m * K + k) / 2), to_int16(even0, even1, inverse));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(x_odd + (m * K + k) / 2), to_int16(odd0, odd1, inverse));
      sums[m * groups + k / group_size] += sum8(_mm256_add_ps(_mm256_add_ps(even0, even1), _mm256_add_ps(odd0, odd1)));
    }
  }
  at::Tensor y = at::empty({M, N}, x.options());
  const Int4Problem p{M, K, N, group_size, groups, K / 2, q.const_data_ptr<uint8_t>(),
                      scales.const_data_ptr<c10::BFloat16>(), zeros.const_data_ptr<c10::BFloat16>(),
                      x_even, x_odd, x_scale.data(), sums.data(), y.mutable_data_ptr<c10::BFloat16>()};
  decoderlm_kernels::over_int4_output_rows(
      N, group_size, [&](auto R, auto HALF, int64_t n) { int4_rows<decltype(R)::value, decltype(HALF)::value>(p, n); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(decoderlm, CPU, m) {
  m.impl("int8_matvec", &int8_matvec);
  m.impl("int4_matvec", &int4_matvec);
}
