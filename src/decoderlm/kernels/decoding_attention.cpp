// One new token's attention over a bf16 KV cache on CPU (a decoding step), hand-written because
// torch's CPU attention kernels spend several times the time it takes to read the cache on one
// query row (docs/generation.md), and because a static cache holds more slots than are filled:
// this kernel reads only the keys the mask lets the token see, up to the last one.
//
// Per key/value head: the query heads that share it (grouped-query attention) each score every
// visible key (vdpbf16ps: 32 bf16 products per instruction), take the softmax in float32, and sum
// the values weighted by it. The op's schema is declared in Python (native.py).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

// q (B, H, 1, D), k / v (B, Hkv, S, D) with rows of D contiguous, visible (B, S) bool -> (B, H, 1, D)
at::Tensor decoding_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& visible) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(D % 32 == 0 && H % Hkv == 0, "decoding_attention: head size must be a multiple of 32");
  TORCH_CHECK(k.stride(3) == 1 && k.stride(2) == D && v.stride(3) == 1 && v.stride(2) == D,
              "decoding_attention: each head's keys and values must be contiguous");
  TORCH_CHECK(q.is_contiguous() && visible.is_contiguous() && visible.size(1) == S, "decoding_attention: layout");
  const int64_t group = H / Hkv, chunks = D / 32;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  at::Tensor out = at::empty({B, H, 1, D}, q.options());
  const auto* qp = q.const_data_ptr<c10::BFloat16>();
  const auto* kp = k.const_data_ptr<c10::BFloat16>();
  const auto* vp = v.const_data_ptr<c10::BFloat16>();
  const bool* mp = visible.const_data_ptr<bool>();
  auto* op = out.mutable_data_ptr<c10::BFloat16>();

  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(group * S);
    std::vector<int32_t> keys(S);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / Hkv, h = item % Hkv;
      const bool* seen = mp + b * S;
      int64_t count = 0;  // the visible slots, in order
      for (int64_t s = 0; s < S; ++s)
        if (seen[s]) keys[count++] = static_cast<int32_t>(s);
      const auto* key_rows = reinterpret_cast<const uint16_t*>(kp + b * k.stride(0) + h * k.stride(1));
      const auto* value_rows = vp + b * v.stride(0) + h * v.stride(1);
      const auto* queries = reinterpret_cast<const uint16_t*>(qp + (b * H + h * group) * D);
      for (int64_t i = 0; i < count; ++i) {  // scores: every query head of the group on key i
        const uint16_t* key = key_rows + keys[i] * D;
        for (int64_t r = 0; r < group; ++r) {
          __m512 acc = _mm512_setzero_ps();
          for (int64_t c = 0; c < chunks; ++c)
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(queries + r * D + 32 * c),
                                   (__m512bh)_mm512_loadu_si512(key + 32 * c));
          scores[r * S + i] = _mm512_reduce_add_ps(acc) * scale;
        }
      }
      for (int64_t r = 0; r < group; ++r) {
        float* row = scores.data() + r * S;
        float top = -std::numeric_limits<float>::infinity(), total = 0;
        for (int64_t i = 0; i < count; ++i) top = std::max(top, row[i]);
        for (int64_t i = 0; i < count; ++i) total += (row[i] = std::exp(row[i] - top));
        const float norm = 1.0f / total;
        std::vector<__m512> acc(2 * chunks, _mm512_setzero_ps());  // D floats of the weighted sum
        for (int64_t i = 0; i < count; ++i) {
          const __m512 p = _mm512_set1_ps(row[i] * norm);
          const auto* value = value_rows + keys[i] * D;
          for (int64_t c = 0; c < 2 * chunks; ++c) {
            const __m256bh half = (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(value + 16 * c));
            acc[c] = _mm512_fmadd_ps(p, _mm512_cvtpbh_ps(half), acc[c]);
          }
        }
        c10::BFloat16* dst = op + (b * H + h * group + r) * D;
        for (int64_t c = 0; c < 2 * chunks; ++c) {
          alignas(64) float lane[16];
          _mm512_store_ps(lane, acc[c]);
          for (int l = 0; l < 16; ++l) dst[16 * c + l] = lane[l];
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(decoderlm, CPU, m) { m.impl("decoding_attention", &decoding_attention); }
