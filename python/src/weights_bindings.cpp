// LayerWeights: synthetic, from a checkpoint, or copied from the caller's tensors; and the owned
// tensors handed back as zero-copy NumPy or PyTorch views, so that another implementation of the
// layer can run on the very same weights.
#include <fmt/format.h>
#include <nanobind/stl/string.h>
#include <algorithm>

#include <set>
#include <string>
#include <vector>

#include "bindings.h"
#include "call_scope.h"
#include "dsattn/core/checks.h"
#include "dsattn/model/checkpoint.h"
#include "dsattn/model/weights.h"
#include "tensor_args.h"

namespace dsattn::python {

namespace {

LayerWeights on_device(LayerWeights w, Device device) {
  if (w.device() == device) return w;
  return w.to(device);
}

// A view of `t` for the framework F, owned by a capsule that keeps t's storage alive.
template <typename F>
nb::object export_tensor(const Tensor& t, nb::dlpack::dtype dtype) {
  auto* handle = new Tensor(t);
  nb::capsule owner(handle, [](void* p) noexcept { delete static_cast<Tensor*>(p); });
  std::vector<std::size_t> shape;
  for (std::int64_t s : t.view().shape()) shape.push_back(static_cast<std::size_t>(s));
  const bool cuda = t.device().is_cuda();
  return nb::ndarray<F>(t.view().data(), shape.size(), shape.data(), owner, nullptr, dtype,
                        cuda ? nb::device::cuda::value : nb::device::cpu::value,
                        cuda ? t.device().index : 0)
      .cast();
}

nb::dict tensors_of(const LayerWeights& w, const std::string& framework) {
  constexpr nb::dlpack::dtype kBf16{static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat), 16,
                                    1};
  const bool numpy = framework == "numpy";
  if (!numpy && framework != "torch") {
    throw nb::value_error(
        fmt::format("framework: expected \"numpy\" or \"torch\", got \"{}\"", framework).c_str());
  }
  if (numpy && w.device().is_cuda()) {
    throw nb::value_error(fmt::format("framework: NumPy holds CPU arrays only, and these weights "
                                      "are on {}; use framework=\"torch\"",
                                      to_string(w.device()))
                              .c_str());
  }
  // The shapes do not matter here, only the names and members.
  nb::dict out;
  for (const AttentionWeightSlot& slot : attention_weight_slots(AttentionConfig{})) {
    const Tensor& t = w.*slot.member;
    if (!t.defined()) continue;  // the indexer of a layer sharing another's top-k (IndexShare)
    out[slot.name] = numpy ? export_tensor<nb::numpy>(t, nb::dtype<std::uint16_t>())
                           : export_tensor<nb::pytorch>(t, kBf16);
  }
  return out;
}

LayerWeights from_tensors(const AttentionConfig& config, const nb::dict& tensors,
                          nb::handle stream) {
  config.validate();
  // Without any indexer weight: a layer that shares an earlier layer's top-k (IndexShare).
  std::vector<AttentionWeightSlot> slots = attention_weight_slots(config);
  const bool indexer = std::any_of(slots.begin(), slots.end(), [&](const auto& slot) {
    return is_indexer_weight(slot.name) && tensors.contains(slot.name);
  });
  std::set<std::string> known;
  for (const AttentionWeightSlot& slot : slots) known.insert(slot.name);
  for (auto [key, value] : tensors) {
    const std::string name = nb::cast<std::string>(nb::str(key));
    if (!known.count(name)) {
      std::string names;
      for (const AttentionWeightSlot& slot : slots)
        names += (names.empty() ? "" : ", ") + std::string(slot.name);
      throw nb::value_error(
          fmt::format("tensors: unknown weight '{}' (expected the names {})", name, names).c_str());
    }
  }

  if (!indexer) std::erase_if(slots, [](const auto& slot) { return is_indexer_weight(slot.name); });
  std::vector<TensorArg> args;
  for (const AttentionWeightSlot& slot : slots) {
    if (!tensors.contains(slot.name)) {
      throw nb::value_error(fmt::format("tensors: missing weight '{}'", slot.name).c_str());
    }
    const bool matrix = slot.shape.size() == 2;
    TensorArg a = tensor_arg(tensors[slot.name], slot.name, {DType::bf16}, matrix ? 2 : 1,
                             matrix ? "[out_features, in_features]" : "[features]");
    if (matrix) {
      check_shape(a.view, slot.name, {slot.shape[0], slot.shape[1]});
    } else {
      check_shape(a.view, slot.name, {slot.shape[0]});
    }
    check_contiguous(a.view, slot.name);
    if (!args.empty() && !(a.device() == args.front().device())) {
      throw nb::value_error(fmt::format("{}: expected a tensor on {} (where {} is), got one on {}",
                                        slot.name, to_string(args.front().device()),
                                        slots.front().name, to_string(a.device()))
                                .c_str());
    }
    args.push_back(std::move(a));
  }

  const Device device = args.front().device();
  const std::uintptr_t s = resolve_stream(stream, tensors[slots.front().name], device);
  LayerWeights w;
  nb::gil_scoped_release release;
  CallScope scope(device, s);
  for (std::size_t i = 0; i < slots.size(); ++i) {
    Tensor& t = w.*slots[i].member;
    t = Tensor::empty(args[i].view.shape(), DType::bf16, device);
    copy(args[i].view, t.view());
  }
  // The weights may be used on any stream from now on.
  if (device.is_cuda()) cuda::synchronize();
  return w;
}

}  // namespace

void bind_weights(nb::module_& m) {
  nb::class_<LayerWeights>(
      m, "LayerWeights",
      "The bf16 weights of one attention layer, named after the checkpoint's tensors without the\n"
      "'model.layers.{i}.self_attn.' prefix ('q_a_proj.weight', ..., 'indexer.k_norm.bias').\n"
      "Linear weights are [out_features, in_features].")
      .def_static(
          "synthetic",
          [](const AttentionConfig& config, std::uint64_t seed, const std::string& device) {
            const Device d = parse_device(device);
            nb::gil_scoped_release release;
            return on_device(LayerWeights::synthetic(config, seed), d);
          },
          nb::arg("config"), nb::arg("seed") = 0, nb::arg("device") = "cpu",
          "Seeded synthetic weights (projections uniform with variance 1/fan_in), identical on\n"
          "every machine for one seed, placed on device ('cpu', 'cuda' or 'cuda:N').")
      .def_static(
          "load",
          [](const std::string& checkpoint_dir, int layer, const std::string& device) {
            const Device d = parse_device(device);
            nb::gil_scoped_release release;
            const Checkpoint checkpoint = Checkpoint::open(checkpoint_dir);
            return on_device(load_layer_weights(checkpoint, layer), d);
          },
          nb::arg("checkpoint_dir"), nb::arg("layer"), nb::arg("device") = "cpu",
          "Loads model.layers.{layer}.self_attn.* of a Hugging Face checkpoint directory\n"
          "(config.json and safetensors shards): bf16 as stored, f32 rounded to bf16, fp8 e4m3\n"
          "dequantised with its 128x128 block scales. Raises dsattn.CheckpointError naming the\n"
          "file and tensor when one is missing or malformed.")
      .def_static("from_tensors", &from_tensors, nb::arg("config"), nb::arg("tensors"),
                  nb::arg("stream") = nb::none(),
                  "Copies the caller's weights: tensors maps every checkpoint name (see\n"
                  "LayerWeights) to a contiguous bf16 tensor (or uint16 bits) of the shape the\n"
                  "config gives it, all on one device, where the weights are placed. For CUDA\n"
                  "tensors the copies run on `stream` (default: the framework's current stream)\n"
                  "and are complete when this returns.")
      .def("tensors", &tensors_of, nb::arg("framework") = "numpy",
           "Every weight by checkpoint name, as zero-copy views of the weights' memory (writing\n"
           "into them changes these weights, and every layer built from them). framework:\n"
           "'numpy' (CPU weights; bf16 as uint16 bits) or 'torch' (torch.bfloat16, CPU or CUDA).")
      .def(
          "to",
          [](const LayerWeights& w, const std::string& device) {
            const Device d = parse_device(device);
            nb::gil_scoped_release release;
            return on_device(w, d);
          },
          nb::arg("device"),
          "These weights on device (the same object's memory when already there).")
      .def_prop_ro(
          "device", [](const LayerWeights& w) { return to_string(w.device()); },
          "'cpu' or 'cuda:N'.");
}

}  // namespace dsattn::python
