#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out) {
  const std::int64_t rows = scores.size(0), k = out.size(1);
  const std::int32_t* len = lengths.ptr<std::int32_t>();
#pragma omp parallel for schedule(dynamic, 16)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* s = scores.row<float>(r);
    std::int32_t* o = out.row<std::int32_t>(r);
    const std::int64_t n = len[r];
    if (n <= k) {  // every position is selected: the scores are not needed
      for (std::int64_t i = 0; i < k; ++i) o[i] = i < n ? static_cast<std::int32_t>(i) : -1;
      continue;
    }
    std::vector<std::int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    // Higher score first; NaN below every number; equal scores: lower position first.
    auto before = [s](std::int32_t a, std::int32_t b) {
      const bool a_nan = std::isnan(s[a]), b_nan = std::isnan(s[b]);
      if (a_nan != b_nan) return b_nan;
      if (!a_nan && s[a] != s[b]) return s[a] > s[b];
      return a < b;
    };
    std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
    std::sort(order.begin(), order.begin() + k);  // the selected set in ascending position order
    for (std::int64_t i = 0; i < k; ++i) o[i] = order[i];
  }
}

// The CPU has no pass over the scores to save: the selection, then the map.
void topk_slots(const TensorView& scores, const TensorView& lengths, const TensorView& row_request,
                const TensorView& block_tables, std::int64_t page_size, const TensorView& out) {
  topk(scores, lengths, out);
  map_positions_to_slots(out, row_request, block_tables, page_size);
}

}  // namespace dsattn::ops::cpu
