// GEMMs through cuBLASLt: bf16 operands, f32 accumulation, bf16 or f32 output. One handle and one
// preallocated workspace per device, and the algorithm chosen per shape once and cached, so that
// the hot path allocates nothing.
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "dsattn/core/cuda_check.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/ops/cuda/cuda_ops.h"

namespace dsattn::ops::cuda {

namespace {

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail<CudaError>("{} failed: cuBLAS status {}", what, static_cast<int>(status));
  }
}

constexpr std::size_t kWorkspaceBytes = 32u << 20;

// A cuBLASLt problem: operands in cuBLAS's column-major view of our row-major tensors.
struct Problem {
  std::int64_t m, n, k, lda, ldb, ldc, batch, stride_a, stride_b, stride_c;
  bool trans_a;  // our b operand in the nt layout
  bool c_f32;
  // Guaranteed pointer alignment in bytes (of every batch entry), up to 256: the heuristic may
  // pick vectorised kernels only when told that operands are aligned.
  std::uint32_t align_a, align_b, align_c;
  auto key() const {
    return std::tuple(m, n, k, lda, ldb, ldc, batch, stride_a, stride_b, stride_c, trans_a, c_f32,
                      align_a, align_b, align_c);
  }
  bool operator<(const Problem& o) const { return key() < o.key(); }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

class Context {
 public:
  static Context& get() {
    static Context context;  // one per process; the handle serves every device
    return context;
  }

  void run(const Problem& p, const void* a, const void* b, void* c, float alpha) {
    std::lock_guard<std::mutex> lock(mutex_);
    int device = 0;
    DSATTN_CUDA_CHECK(cudaGetDevice(&device));
    void* workspace = workspace_for(device);
    const Plan& plan = plan_for(p, device);
    const float beta = 0.0f;
    check(cublasLtMatmul(handle_, plan.op, &alpha, a, plan.a, b, plan.b, &beta, c, plan.c, c,
                         plan.c, &plan.algo, workspace, kWorkspaceBytes,
                         static_cast<cudaStream_t>(::dsattn::cuda::current_stream())),
          "cublasLtMatmul");
  }

 private:
  Context() { check(cublasLtCreate(&handle_), "cublasLtCreate"); }

  void* workspace_for(int device) {
    auto it = workspaces_.find(device);
    if (it != workspaces_.end()) return it->second;
    void* p = nullptr;
    DSATTN_CUDA_CHECK(cudaMalloc(&p, kWorkspaceBytes));
    workspaces_[device] = p;
    return p;
  }

  static cublasLtMatrixLayout_t layout(cudaDataType_t type, std::int64_t rows, std::int64_t cols,
                                       std::int64_t ld, std::int64_t batch, std::int64_t stride) {
    cublasLtMatrixLayout_t l = nullptr;
    check(cublasLtMatrixLayoutCreate(&l, type, rows, cols, ld), "cublasLtMatrixLayoutCreate");
    if (batch > 1) {
      const int count = static_cast<int>(batch);
      check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                             sizeof(count)),
            "cublasLtMatrixLayoutSetAttribute");
      check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                             &stride, sizeof(stride)),
            "cublasLtMatrixLayoutSetAttribute");
    }
    return l;
  }

  const Plan& plan_for(const Problem& p, int device) {
    const auto key = std::pair(device, p);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan plan;
    check(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
          "cublasLtMatmulDescCreate");
    const cublasOperation_t ta = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)),
          "cublasLtMatmulDescSetAttribute");
    check(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)),
          "cublasLtMatmulDescSetAttribute");
    // Column-major view: A is (trans_a ? k x m : m x k), B is k x n, C is m x n.
    plan.a = layout(CUDA_R_16BF, p.trans_a ? p.k : p.m, p.trans_a ? p.m : p.k, p.lda, p.batch,
                    p.stride_a);
    plan.b = layout(CUDA_R_16BF, p.k, p.n, p.ldb, p.batch, p.stride_b);
    plan.c = layout(p.c_f32 ? CUDA_R_32F : CUDA_R_16BF, p.m, p.n, p.ldc, p.batch, p.stride_c);
    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const std::size_t ws = kWorkspaceBytes;
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                               sizeof(ws)),
          "cublasLtMatmulPreferenceSetAttribute");
    for (auto [attr, value] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, p.align_a},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, p.align_b},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, p.align_c},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, p.align_c}}) {
      check(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)),
            "cublasLtMatmulPreferenceSetAttribute");
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    check(cublasLtMatmulAlgoGetHeuristic(handle_, plan.op, plan.a, plan.b, plan.c, plan.c, pref, 1,
                                         &result, &found),
          "cublasLtMatmulAlgoGetHeuristic");
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) {
      fail<Unsupported>("cuBLASLt has no algorithm for a {}x{}x{} GEMM (batch {})", p.m, p.n, p.k,
                        p.batch);
    }
    plan.algo = result.algo;
    return plans_.emplace(key, plan).first->second;
  }

  std::mutex mutex_;
  cublasLtHandle_t handle_ = nullptr;
  std::map<int, void*> workspaces_;
  std::map<std::pair<int, Problem>, Plan> plans_;
};

// The largest power of two up to 256 dividing the address and the batch stride (in bytes).
std::uint32_t alignment(const void* p, std::int64_t batch_stride_bytes) {
  std::uint64_t bits = reinterpret_cast<std::uintptr_t>(p) | 256u;
  if (batch_stride_bytes != 0) bits |= static_cast<std::uint64_t>(batch_stride_bytes);
  return static_cast<std::uint32_t>(bits & (~bits + 1));
}

}  // namespace

void gemm(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
          float alpha) {
  // Row-major C[M,N] = A[M,K] · op(B) is column-major Cᵀ[N,M] = op(B)ᵀ · Aᵀ: cuBLAS's "A" is our
  // b and its "B" is our a.
  const bool batched = a.ndim() == 3;
  const std::int64_t M = a.size(-2), K = a.size(-1), N = c.size(-1);
  Problem p{};
  p.m = N;
  p.n = M;
  p.k = K;
  p.trans_a = layout == BLayout::nt;  // b is [N, K] row-major = K x N column-major, transposed
  p.lda = b.stride(-2);
  p.ldb = a.stride(-2);
  p.ldc = c.stride(-2);
  p.batch = batched ? a.size(0) : 1;
  p.stride_a = batched && b.ndim() == 3 ? b.stride(0) : 0;
  p.stride_b = batched ? a.stride(0) : 0;
  p.stride_c = batched ? c.stride(0) : 0;
  p.c_f32 = c.dtype() == DType::f32;
  p.align_a = alignment(b.data(), p.stride_a * 2);
  p.align_b = alignment(a.data(), p.stride_b * 2);
  p.align_c = alignment(c.data(), p.stride_c * (p.c_f32 ? 4 : 2));
  Context::get().run(p, b.data(), a.data(), c.data(), alpha);
}

}  // namespace dsattn::ops::cuda
