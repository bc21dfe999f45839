// What the two builds of the quantized matrix-vector kernels share (quantized_matvec.cpp for
// AVX-512 BF16, quantized_matvec_avx2.cpp for AVX2): how output rows are split into blocks and
// threads, and the argument checks of the ops.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <type_traits>

namespace decoderlm_kernels {

constexpr int kBlock = 4;  // output rows per block

// Every output row, a block of kBlock at a time over torch's threads (`block(n)` computes rows
// n .. n+kBlock-1); the rows of a last, shorter block one by one (`row(n)`).
template <typename Block, typename Row>
void over_output_rows(int64_t N, const Block& block, const Row& row) {
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = b * kBlock;
      if (n + kBlock <= N) {
        block(n);
      } else {
        for (int64_t t = n; t < N; ++t) row(t);
      }
    }
  });
}

// The int4 products' row loop. Groups of 64 (the default) get a copy of their own: with the group's
// width known at compile time, the loop over a group's bytes unrolls. `rows(R, HALF, n)` computes
// rows n .. n+R-1 with HALF = a group's bytes in a row (32), or 0 for any group size; both come as
// std::integral_constant, so the kernel can use them as template arguments.
template <typename Rows>
void over_int4_output_rows(int64_t N, int64_t group_size, const Rows& rows) {
  using Block = std::integral_constant<int, kBlock>;
  using One = std::integral_constant<int, 1>;
  if (group_size == 64) {
    using Half = std::integral_constant<int, 32>;
    over_output_rows(N, [&](int64_t n) { rows(Block{}, Half{}, n); }, [&](int64_t n) { rows(One{}, Half{}, n); });
  } else {
    using Any = std::integral_constant<int, 0>;
    over_output_rows(N, [&](int64_t n) { rows(Block{}, Any{}, n); }, [&](int64_t n) { rows(One{}, Any{}, n); });
  }
}

inline void check_int8_args(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales) {
  const int64_t K = x.size(1), N = q.size(0);
  TORCH_CHECK(K % 16 == 0 && q.size(1) == K, "int8_matvec: in_features must match and be a multiple of 16");
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == N, "int8_matvec: one scale per output row");
  TORCH_CHECK(x.is_contiguous() && q.is_contiguous() && scales.is_contiguous(), "int8_matvec: contiguous inputs");
}

inline void check_int4_args(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                            const at::Tensor& zeros, int64_t group_size) {
  const int64_t K = x.size(1), N = q.size(0);
  TORCH_CHECK(group_size > 0 && group_size % 64 == 0 && K % group_size == 0 && q.size(1) * 2 == K,
              "int4_matvec: the group size must be a multiple of 64 that divides in_features");
  const int64_t groups = K / group_size;
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N && scales.size(1) == groups && zeros.sizes() == scales.sizes(),
              "int4_matvec: scales and zeros must be (out_features, in_features / group_size)");
  TORCH_CHECK(x.is_contiguous() && q.is_contiguous() && scales.is_contiguous() && zeros.is_contiguous(),
              "int4_matvec: contiguous inputs");
}

}  // namespace decoderlm_kernels
