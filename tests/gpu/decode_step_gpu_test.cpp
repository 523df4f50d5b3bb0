// DecodeStep on the GPU: the device-built tables equal the CPU's (faults included), and a step
// captured in the caller's CUDA graph (global capture mode, as torch.cuda.graph uses) and
// replayed with new lengths written into the same device tensors gives the layer's forward under
// `mla` bit for bit, across index_topk; a first run inside a capture is refused.
#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "decode_test_util.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_stack.h"
#include "dsattn/layer/decode_step.h"
#include "dsattn/ops/cache_ops.h"
#include "gpu_test_util.h"

namespace dsattn {
namespace {

using gpu_test::gpu;
using gpu_test::prefill_prompts;
using gpu_test::Prefilled;
using ::testing::HasSubstr;
namespace test = gpu_test;

class DecodeStepGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  }
};

Tensor i32_host(const std::vector<std::int32_t>& v, std::vector<std::int64_t> shape) {
  Tensor t = Tensor::empty(shape, DType::i32);
  std::copy(v.begin(), v.end(), t.ptr<std::int32_t>());
  return t;
}

// The tables of `batch` requests built by `device`'s backend, as one host tensor, faults last.
Tensor build_tables(const Tensor& prefix, const Tensor& tables_in, std::int64_t tokens,
                    std::int64_t page_size, std::int64_t num_pages, std::int64_t max_context,
                    Device device) {
  const std::int64_t batch = prefix.size(0), rows = batch * tokens,
                     max_pages = pages_for(max_context, page_size);
  const std::int64_t size = 4 * rows + 2 * batch + 1 + batch * max_pages + 1;
  Tensor host = Tensor::empty({size}, DType::i32);
  std::fill_n(host.ptr<std::int32_t>(), size, test::kI32Poison);
  host.ptr<std::int32_t>()[size - 1] = 0;  // faults start clear
  const Tensor out = host.to(device);
  std::int32_t* o = out.ptr<std::int32_t>();
  ops::DecodeTables t;
  t.positions = TensorView(o, DType::i32, device, {rows});
  t.visible = TensorView(o + rows, DType::i32, device, {rows});
  t.slots = TensorView(o + 2 * rows, DType::i32, device, {rows});
  t.row_request = TensorView(o + 3 * rows, DType::i32, device, {rows});
  t.cu_q = TensorView(o + 4 * rows, DType::i32, device, {batch + 1});
  t.context_lens = TensorView(o + 4 * rows + batch + 1, DType::i32, device, {batch});
  t.block_tables = TensorView(o + 4 * rows + 2 * batch + 1, DType::i32, device, {batch, max_pages});
  t.faults = TensorView(o + size - 1, DType::i32, device, {1});
  ops::build_decode_tables(prefix.to(device), tables_in.to(device), tokens, page_size, num_pages,
                           max_context, t);
  return out.to(Device::cpu());
}

TEST_F(DecodeStepGpu, TablesMatchTheCpuFaultsIncluded) {
  std::mt19937 gen(5);
  const std::int64_t batch = 37, tokens = 3, page_size = 16, num_pages = 50, max_context = 300;
  const std::int64_t width = pages_for(max_context, page_size) + 2;
  std::vector<std::int32_t> prefix(batch), tables(batch * width);
  for (auto& p : prefix) p = std::uniform_int_distribution<int>(-2, max_context)(gen);
  for (auto& e : tables) e = std::uniform_int_distribution<int>(-1, num_pages + 1)(gen);
  prefix[0] = 10;  // and one clean request
  for (std::int64_t j = 0; j < width; ++j) tables[j] = static_cast<std::int32_t>(j);
  const Tensor p = i32_host(prefix, {batch}), t = i32_host(tables, {batch, width});
  const Tensor cpu = build_tables(p, t, tokens, page_size, num_pages, max_context, Device::cpu());
  const Tensor dev = build_tables(p, t, tokens, page_size, num_pages, max_context, gpu());
  EXPECT_TRUE(test::same_bytes(dev, cpu, "tables"));
  EXPECT_EQ(cpu.ptr<std::int32_t>()[cpu.numel() - 1],
            ops::kDecodeFaultContext | ops::kDecodeFaultPage);
}

void captured_steps_match_the_forward(LatentFormat format, std::int64_t tokens) {
  const AttentionConfig c = gpu_test::decode_test_config(32);
  const AttentionStack stack = AttentionStack::synthetic(c, 1, 23, Policy::parse("mla"), gpu());
  const AttentionLayer& layer = stack.layer(0);
  // Contexts below index_topk, crossing it during the steps (29 -> 33 and more), and above.
  const std::vector<std::int64_t> prompts = {6, 29, 40, 90};
  const std::int64_t batch = static_cast<std::int64_t>(prompts.size()), steps = 4,
                     max_context = 112, rows = batch * tokens;
  Prefilled a = prefill_prompts(stack, prompts, max_context, format, 16);
  Prefilled b = prefill_prompts(stack, prompts, max_context, format, 16);
  DecodeStep step(layer, a.cache->layer(0), batch, tokens, max_context);

  // The caller's device tensors, written before each replay.
  std::vector<std::int32_t> table_rows;
  for (const BlockTable& t : a.tables) {
    for (std::int64_t j = 0; j < step.max_pages(); ++j) table_rows.push_back(t[j]);
  }
  const Tensor tables = i32_host(table_rows, {batch, step.max_pages()}).to(gpu());
  const Tensor prefix = Tensor::empty({batch}, DType::i32, gpu());
  const Tensor hidden = Tensor::empty({rows, c.hidden_size}, DType::bf16, gpu());
  const Tensor out = Tensor::empty({rows, c.hidden_size}, DType::bf16, gpu());

  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  for (std::int64_t s = 0; s < steps; ++s) {
    std::vector<std::int32_t> lens;
    std::vector<RequestInput> reqs;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      lens.push_back(static_cast<std::int32_t>(prompts[i] + s * tokens));
      reqs.push_back({prompts[i] + s * tokens, tokens, b.tables[i]});
    }
    Tensor x = Tensor::empty({rows, c.hidden_size}, DType::bf16);
    fill_uniform(x, 100 + s, 2, 1.0f);
    copy(i32_host(lens, {batch}), prefix);
    copy(x, hidden);
    copy(test::poisoned({rows, c.hidden_size}, DType::bf16), out);
    {
      cuda::StreamGuard on(stream);
      if (s == 0) {
        // A first run inside a capture is refused; the warm-up runs eagerly, then the capture.
        DecodeStep cold(layer, a.cache->layer(0), batch, tokens, max_context);
        ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
        try {
          cold.run(prefix, tables, hidden, out);
          ADD_FAILURE() << "a cold run inside a capture was not refused";
        } catch (const InvalidArgument& e) {
          EXPECT_THAT(e.what(), HasSubstr("run the step once outside the capture first"));
        }
        cudaGraph_t graph = nullptr;
        ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
        cudaGraphDestroy(graph);
        step.run(prefix, tables, hidden, out);
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        // The warm-up wrote this step's cache rows; the capture's replay rewrites them alike.
        ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
        step.run(prefix, tables, hidden, out);
        ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
        ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
        cudaGraphDestroy(graph);
        copy(test::poisoned({rows, c.hidden_size}, DType::bf16), out);
      }
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    }
    Batch forward_batch;
    forward_batch.mode = ForwardMode::decode;
    forward_batch.requests = reqs;
    Tensor expected = Tensor::empty({rows, c.hidden_size}, DType::bf16, gpu());
    layer.forward(forward_batch, hidden, b.cache->layer(0), expected);
    EXPECT_TRUE(test::same_bytes(out.to(Device::cpu()), expected.to(Device::cpu()),
                                 "step " + std::to_string(s)));
  }
  EXPECT_TRUE(step.take_faults().empty());
  EXPECT_GT(step.reserved_bytes(), 0u);
  cudaGraphExecDestroy(exec);
  cudaStreamDestroy(stream);
}

TEST_F(DecodeStepGpu, CapturedStepsMatchTheForwardBf16Cache) {
  captured_steps_match_the_forward(LatentFormat::bf16, 1);
}
TEST_F(DecodeStepGpu, CapturedStepsMatchTheForwardFp8Cache) {
  captured_steps_match_the_forward(LatentFormat::fp8, 1);
}
TEST_F(DecodeStepGpu, CapturedVerifyStepsMatchTheForward) {
  captured_steps_match_the_forward(LatentFormat::fp8, 3);
}

}  // namespace
}  // namespace dsattn
