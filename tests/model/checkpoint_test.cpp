// Safetensors reading and writing, and checkpoint loading: bf16 and block-scaled fp8 round trips
// through single-file and sharded layouts, and the refusals of malformed files with messages that
// name the file and the tensor.
#include "dsattn/model/checkpoint.h"
#include "dsattn/model/checkpoint_writer.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error_message.h"
#include "core/temp_dir.h"
#include "dsattn/model/safetensors.h"
#include "model/model_test_config.h"

namespace dsattn {
namespace {

namespace fs = std::filesystem;
using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

AttentionConfig small_config() { return testing::small_model_config(); }

using ::dsattn::testing::TempDir;

struct Slot {
  const char* name;
  Tensor LayerWeights::*member;
};
const Slot kSlots[] = {
    {"q_a_proj.weight", &LayerWeights::q_a_proj},
    {"q_a_layernorm.weight", &LayerWeights::q_a_layernorm},
    {"q_b_proj.weight", &LayerWeights::q_b_proj},
    {"kv_a_proj_with_mqa.weight", &LayerWeights::kv_a_proj_with_mqa},
    {"kv_a_layernorm.weight", &LayerWeights::kv_a_layernorm},
    {"kv_b_proj.weight", &LayerWeights::kv_b_proj},
    {"o_proj.weight", &LayerWeights::o_proj},
    {"indexer.wq_b.weight", &LayerWeights::indexer_wq_b},
    {"indexer.wk.weight", &LayerWeights::indexer_wk},
    {"indexer.k_norm.weight", &LayerWeights::indexer_k_norm},
    {"indexer.k_norm.bias", &LayerWeights::indexer_k_norm_bias},
    {"indexer.weights_proj.weight", &LayerWeights::indexer_weights_proj},
};

bool bit_identical(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         std::equal(a.view().shape().begin(), a.view().shape().end(), b.view().shape().begin(),
                    b.view().shape().end()) &&
         std::memcmp(a.view().data(), b.view().data(), a.nbytes()) == 0;
}

void write_raw(const std::string& path, const std::string& header, std::size_t data_bytes,
               std::uint64_t header_len_override = 0) {
  std::ofstream out(path, std::ios::binary);
  std::uint64_t n = header_len_override != 0 ? header_len_override : header.size();
  for (int i = 0; i < 8; ++i) {
    out.put(static_cast<char>(n & 0xff));
    n >>= 8;
  }
  out << header;
  out << std::string(data_bytes, '\0');
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// ---- safetensors ----

TEST(Safetensors, WriteReadRoundTrip) {
  TempDir dir;
  std::vector<float> f{1.0f, -2.5f, 3.25f, 0.0f, 7.0f, 1e-3f};
  std::vector<std::uint16_t> b{0x3f80, 0xc000, 0x4040};
  std::vector<std::uint8_t> e{0x38, 0x40, 0xb8, 0x00};
  write_safetensors(dir.file("a.safetensors"),
                    {{"f", DType::f32, {2, 3}, std::as_bytes(std::span(f))},
                     {"b", DType::bf16, {3}, std::as_bytes(std::span(b))},
                     {"e", DType::fp8_e4m3, {2, 2}, std::as_bytes(std::span(e))},
                     {"empty", DType::f32, {0, 4}, {}}},
                    {{"format", "pt"}});
  const std::string bytes = read_all(dir.file("a.safetensors"));
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);

  SafetensorsFile file = SafetensorsFile::open(dir.file("a.safetensors"));
  EXPECT_EQ(file.tensors().size(), 4u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  const Tensor tf = file.load("f");
  EXPECT_EQ(tf.dtype(), DType::f32);
  EXPECT_EQ(tf.size(0), 2);
  EXPECT_EQ(tf.size(1), 3);
  EXPECT_EQ(std::memcmp(tf.ptr<float>(), f.data(), f.size() * 4), 0);
  const Tensor tb = file.load("b");
  EXPECT_EQ(tb.dtype(), DType::bf16);
  EXPECT_EQ(std::memcmp(tb.view().data(), b.data(), b.size() * 2), 0);
  const Tensor te = file.load("e");
  EXPECT_EQ(te.dtype(), DType::fp8_e4m3);
  EXPECT_EQ(std::memcmp(te.view().data(), e.data(), e.size()), 0);
  EXPECT_EQ(file.tensor("empty").nbytes, 0u);
  EXPECT_FALSE(file.contains("missing"));

  // Moving keeps the mapping valid.
  SafetensorsFile moved = std::move(file);
  EXPECT_EQ(moved.load("f").ptr<float>()[1], -2.5f);
}

TEST(Safetensors, WriterRefusesWrongByteCount) {
  TempDir dir;
  std::vector<float> f(5);
  const std::string msg = thrown_message<InvalidArgument>([&] {
    write_safetensors(dir.file("x.safetensors"),
                      {{"w", DType::f32, {2, 3}, std::as_bytes(std::span(f))}});
  });
  EXPECT_THAT(msg, AllOf(HasSubstr("w"), HasSubstr("needs 24 bytes, got 20")));
}

TEST(Safetensors, TruncatedFile) {
  TempDir dir;
  write_all(dir.file("t.safetensors"), "abc");
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("t.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("t.safetensors"), HasSubstr("truncated")));
}

TEST(Safetensors, TruncatedData) {
  TempDir dir;
  std::vector<float> f(64, 1.0f);
  write_safetensors(dir.file("t.safetensors"),
                    {{"model.w", DType::f32, {8, 8}, std::as_bytes(std::span(f))}});
  std::string bytes = read_all(dir.file("t.safetensors"));
  write_all(dir.file("t.safetensors"), bytes.substr(0, bytes.size() - 10));
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("t.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("t.safetensors"), HasSubstr("model.w"),
                         HasSubstr("past the end"), HasSubstr("truncated")));
}

TEST(Safetensors, HeaderLengthPastEnd) {
  TempDir dir;
  write_raw(dir.file("h.safetensors"), "{}", 0, 1000);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("h.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("h.safetensors"), HasSubstr("header length 1000"),
                         HasSubstr("past the end of the file")));
}

TEST(Safetensors, InvalidJson) {
  TempDir dir;
  write_raw(dir.file("j.safetensors"), "{\"w\": {\"dtype\": ", 0);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("j.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("j.safetensors"), HasSubstr("not valid JSON")));
}

// A number JSON cannot hold (1e400) is the reader's own error naming the file, not the JSON
// library's out_of_range.
TEST(Safetensors, NumberOutOfRange) {
  TempDir dir;
  write_raw(dir.file("n.safetensors"),
            R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}})", 4);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("n.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("n.safetensors"), HasSubstr("not valid JSON")));
}

TEST(Safetensors, HeaderNotAnObject) {
  TempDir dir;
  write_raw(dir.file("j.safetensors"), "[1, 2]", 0);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("j.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("j.safetensors"), HasSubstr("must be a JSON object")));
}

TEST(Safetensors, OffsetsOutOfRange) {
  TempDir dir;
  write_raw(dir.file("o.safetensors"),
            R"({"layer.w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}})", 16);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("o.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("o.safetensors"), HasSubstr("layer.w"), HasSubstr("[16, 32]"),
                         HasSubstr("past the end")));
}

TEST(Safetensors, OffsetsReversed) {
  TempDir dir;
  write_raw(dir.file("o.safetensors"),
            R"({"layer.w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 16);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("o.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("layer.w"), HasSubstr("[8, 4]")));
}

// The format requires the tensors to tile the data section: overlapping tensors (one tensor's
// bytes read as another's), holes, bytes after the last tensor and a name given twice are
// refused, naming the file and the tensors.
TEST(Safetensors, TensorsMustTileTheDataSectionExactly) {
  TempDir dir;
  const auto open_error = [&](const std::string& header, std::size_t data_bytes) {
    write_raw(dir.file("t.safetensors"), header, data_bytes);
    return thrown_message<CheckpointError>(
        [&] { SafetensorsFile::open(dir.file("t.safetensors")); });
  };
  EXPECT_THAT(open_error(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                         24),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensors a and b overlap")));
  EXPECT_THAT(open_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
                         20),
              AllOf(HasSubstr("bytes 8 to 12"), HasSubstr("belong to no tensor"), HasSubstr("b")));
  EXPECT_THAT(open_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 12),
              AllOf(HasSubstr("4 bytes after the last tensor")));
  EXPECT_THAT(open_error(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                             "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                         8),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("names a twice")));
  // Zero-size tensors and any order of entries are fine.
  write_raw(dir.file("ok.safetensors"),
            R"({"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                "e": {"dtype": "BF16", "shape": [0], "data_offsets": [8, 8]},
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
            8);
  EXPECT_EQ(SafetensorsFile::open(dir.file("ok.safetensors")).tensor("b").offset, 4u);
}

TEST(Safetensors, DtypeShapeMismatch) {
  TempDir dir;
  // 3 x 4 BF16 needs 24 bytes; the offsets give 48 (as if F32).
  write_raw(dir.file("m.safetensors"),
            R"({"layer.w": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 48]}})", 48);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("m.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("m.safetensors"), HasSubstr("layer.w"),
                         HasSubstr("hold 48 bytes"), HasSubstr("[3, 4]"), HasSubstr("needs 24")));
}

TEST(Safetensors, UnsupportedDtype) {
  TempDir dir;
  write_raw(dir.file("d.safetensors"),
            R"({"layer.w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}})", 8);
  const std::string msg =
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("d.safetensors")); });
  EXPECT_THAT(msg, AllOf(HasSubstr("d.safetensors"), HasSubstr("layer.w"),
                         HasSubstr("unsupported dtype F16")));
}

TEST(Safetensors, BadFields) {
  TempDir dir;
  for (const char* header : {R"({"w": {"shape": [1], "data_offsets": [0, 4]}})",
                             R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
                             R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})",
                             R"({"w": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}})",
                             R"({"w": 3})", R"({"__metadata__": {"k": 1}})"}) {
    write_raw(dir.file("f.safetensors"), header, 4);
    const std::string msg =
        thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("f.safetensors")); });
    EXPECT_THAT(msg, HasSubstr("f.safetensors")) << header;
  }
}

TEST(Safetensors, MissingFileAndTensor) {
  TempDir dir;
  EXPECT_THAT(
      thrown_message<CheckpointError>([&] { SafetensorsFile::open(dir.file("none.safetensors")); }),
      AllOf(HasSubstr("none.safetensors"), HasSubstr("cannot open")));
  write_safetensors(dir.file("e.safetensors"), {});
  SafetensorsFile f = SafetensorsFile::open(dir.file("e.safetensors"));
  EXPECT_THAT(thrown_message<CheckpointError>([&] { f.tensor("x.weight"); }),
              AllOf(HasSubstr("e.safetensors"), HasSubstr("x.weight")));
}

// ---- fp8 block quantisation ----

TEST(Fp8Blocks, QuantiseDequantiseWithinRounding) {
  const AttentionConfig c = small_config();
  const LayerWeights w = LayerWeights::synthetic(c, 3);
  const Tensor& t = w.q_b_proj;  // [160, 96]: a partial row block
  const Fp8BlockWeight q = quantize_fp8_blocks(t);
  EXPECT_EQ(q.scale_inv.size(0), 2);
  EXPECT_EQ(q.scale_inv.size(1), 1);
  const Tensor d = dequantize_fp8_blocks(q.values, q.scale_inv);
  const std::int64_t cols = t.size(1);
  for (std::int64_t i = 0; i < t.size(0); ++i) {
    const float scale = q.scale_inv.ptr<float>()[(i / 128) * q.scale_inv.size(1)];
    for (std::int64_t j = 0; j < cols; ++j) {
      const float orig = t.ptr<bf16>()[i * cols + j].to_float();
      const float got = d.ptr<bf16>()[i * cols + j].to_float();
      // e4m3 keeps 3 mantissa bits (relative error <= 2^-4) with subnormals below 2^-6, then
      // bf16 rounding adds 2^-9.
      const float tol = std::max(std::abs(orig) * (0.0625f + 0.004f), scale * 0.0020f);
      ASSERT_LE(std::abs(got - orig), tol) << i << "," << j;
    }
  }
}

// ---- checkpoints ----

void expect_bit_identical(const LayerWeights& got, const LayerWeights& want) {
  for (const Slot& s : kSlots) {
    EXPECT_TRUE(bit_identical(got.*s.member, want.*s.member)) << s.name;
  }
}

TEST(Checkpoint, Bf16RoundTripSharded) {
  TempDir dir;
  const AttentionConfig c = small_config();
  write_synthetic_checkpoint(dir.path().string(), c, 3, 100, false);
  EXPECT_TRUE(fs::exists(dir.path() / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir.path() / "model-00003-of-00003.safetensors"));
  const Checkpoint ck = Checkpoint::open(dir.path().string());
  EXPECT_EQ(ck.config().hidden_size, c.hidden_size);
  EXPECT_EQ(ck.config().index_n_heads, c.index_n_heads);
  EXPECT_DOUBLE_EQ(ck.config().softmax_scale(), c.softmax_scale());
  EXPECT_FALSE(ck.quantization().fp8);
  EXPECT_EQ(ck.weight_map().at("model.layers.1.self_attn.o_proj.weight"),
            "model-00002-of-00003.safetensors");
  for (int layer = 0; layer < 3; ++layer) {
    const LayerWeights got = load_layer_weights(ck, layer);
    got.validate(c);
    expect_bit_identical(got, LayerWeights::synthetic(c, 100 + layer));
  }
  EXPECT_THAT(thrown_message<CheckpointError>([&] { load_layer_weights(ck, 3); }),
              HasSubstr("model.layers.3.self_attn.q_a_proj.weight"));
}

// The files of a folder, name -> bytes.
std::map<std::string, std::string> folder_contents(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    files[e.path().filename().string()] =
        e.is_regular_file() ? read_all(e.path().string()) : std::string("<folder>");
  }
  return files;
}

// A smaller checkpoint written over a larger one leaves none of the larger one's shards, and the
// folder's other files alone.
TEST(CheckpointWriter, OverwritingLeavesNoStaleShards) {
  TempDir dir;
  const AttentionConfig c = small_config();
  write_synthetic_checkpoint(dir.path().string(), c, 3, 100, false);
  write_all((dir.path() / "tokenizer.json").string(), "{}");
  write_synthetic_checkpoint(dir.path().string(), c, 1, 200, false);
  std::vector<std::string> names;
  for (const auto& [name, bytes] : folder_contents(dir.path())) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "model-00001-of-00001.safetensors",
                                             "model.safetensors.index.json", "tokenizer.json"}));
  expect_bit_identical(load_layer_weights(Checkpoint::open(dir.path().string()), 0),
                       LayerWeights::synthetic(c, 200));
  // Sharded over single-file and back: the other layout's files go.
  write_synthetic_checkpoint(dir.path().string(), c, 2, 300, false, CheckpointLayout::single_file);
  EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir.path() / "model-00001-of-00001.safetensors"));
  EXPECT_TRUE(fs::exists(dir.path() / "model.safetensors"));
}

// Names in `dir` that a writer's staging folder would have.
std::vector<std::string> staging_leftovers(const fs::path& dir) {
  std::vector<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find("dsattn-partial") != std::string::npos) names.push_back(name);
  }
  return names;
}

// Writing over a checkpoint swaps the whole folder in one step: a reader that holds the old
// folder open keeps seeing only the old files (here, none once the writer has removed them),
// never the new ones beside old ones; the folder's other files and subfolders come along, and
// no staging folder is left beside it.
TEST(CheckpointWriter, TheFolderIsReplacedWhole) {
  TempDir parent;
  const fs::path dir = parent.path() / "ckpt";
  const AttentionConfig c = small_config();
  write_synthetic_checkpoint(dir.string(), c, 2, 100, false);
  write_all((dir / "tokenizer.json").string(), "{\"v\": 1}");
  fs::create_directory(dir / "extra");
  write_all((dir / "extra" / "notes.txt").string(), "kept");
  const int old_folder = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(old_folder, 0);
  struct stat st;
  ASSERT_EQ(::fstatat(old_folder, "config.json", &st, 0), 0);
  write_synthetic_checkpoint(dir.string(), c, 1, 200, false);
  EXPECT_NE(::fstatat(old_folder, "config.json", &st, 0), 0)
      << "the new config.json appeared in the old folder: the files were moved in one by one";
  ::close(old_folder);
  expect_bit_identical(load_layer_weights(Checkpoint::open(dir.string()), 0),
                       LayerWeights::synthetic(c, 200));
  EXPECT_EQ(read_all((dir / "tokenizer.json").string()), "{\"v\": 1}");
  EXPECT_EQ(read_all((dir / "extra" / "notes.txt").string()), "kept");
  EXPECT_FALSE(fs::exists(dir / "model-00002-of-00002.safetensors"));
  EXPECT_TRUE(staging_leftovers(parent.path()).empty());
  EXPECT_TRUE(staging_leftovers(dir).empty());
}

// Written through a symbolic link to the folder: the link stays a link to the same folder, which
// holds the new checkpoint.
TEST(CheckpointWriter, ALinkToTheFolderStaysALink) {
  TempDir parent;
  const fs::path real = parent.path() / "real", link = parent.path() / "link";
  const AttentionConfig c = small_config();
  write_synthetic_checkpoint(real.string(), c, 1, 100, false);
  fs::create_directory_symlink(real, link);
  write_synthetic_checkpoint(link.string(), c, 1, 200, false);
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(fs::read_symlink(link), real);
  expect_bit_identical(load_layer_weights(Checkpoint::open(real.string()), 0),
                       LayerWeights::synthetic(c, 200));
  EXPECT_TRUE(staging_leftovers(parent.path()).empty());
}

// A writer that fails before finish() leaves the old checkpoint byte for byte and nothing of
// its own (no staging folder, no partial shard).
TEST(CheckpointWriter, AFailureLeavesTheOldCheckpointIntact) {
  TempDir dir;
  const AttentionConfig c = small_config();
  write_synthetic_checkpoint(dir.path().string(), c, 2, 100, true);
  const auto before = folder_contents(dir.path());
  EXPECT_THAT(thrown_message<InvalidArgument>([&] {
                CheckpointWriter writer(dir.path().string(), false, CheckpointLayout::sharded, 3);
                writer.add("model.layers.0.self_attn.o_proj.weight",
                           LayerWeights::synthetic(c, 9).o_proj);
                writer.end_shard();   // written to the staging folder
                writer.finish(c, 3);  // only one of three shards: refused
              }),
              HasSubstr("3 shards declared, 1 written"));
  EXPECT_EQ(folder_contents(dir.path()), before);
}

TEST(Checkpoint, Bf16RoundTripSingleFile) {
  TempDir dir;
  const AttentionConfig c = small_config();
  write_synthetic_checkpoint(dir.path().string(), c, 2, 7, false, CheckpointLayout::single_file);
  EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors.index.json"));
  const Checkpoint ck = Checkpoint::open(dir.path().string());
  expect_bit_identical(load_layer_weights(ck, 1), LayerWeights::synthetic(c, 8));
  expect_bit_identical(load_layer_weights(ck, 0), LayerWeights::synthetic(c, 7));
}

TEST(Checkpoint, Fp8RoundTrip) {
  for (CheckpointLayout layout : {CheckpointLayout::sharded, CheckpointLayout::single_file}) {
    TempDir dir;
    const AttentionConfig c = small_config();
    write_synthetic_checkpoint(dir.path().string(), c, 2, 11, true, layout);
    const Checkpoint ck = Checkpoint::open(dir.path().string());
    EXPECT_TRUE(ck.quantization().fp8);
    const std::string prefix = attention_prefix(1);
    const SafetensorsFile& shard = ck.shard_for(prefix + "q_a_proj.weight");
    EXPECT_EQ(shard.tensor(prefix + "q_a_proj.weight").dtype, DType::fp8_e4m3);
    EXPECT_EQ(shard.tensor(prefix + "q_a_proj.weight_scale_inv").dtype, DType::f32);
    EXPECT_EQ(shard.tensor(prefix + "q_a_proj.weight_scale_inv").shape, (Shape{1, 3}));
    EXPECT_EQ(shard.tensor(prefix + "q_a_layernorm.weight").dtype, DType::bf16);

    const LayerWeights orig = LayerWeights::synthetic(c, 12);
    const LayerWeights got = load_layer_weights(ck, 1);
    for (const Slot& s : kSlots) {
      const Tensor& o = orig.*s.member;
      const Tensor& g = got.*s.member;
      if (o.view().ndim() == 1) {
        EXPECT_TRUE(bit_identical(g, o)) << s.name;
        continue;
      }
      // Exactly the direct computation from the stored bytes.
      const std::string name = prefix + s.name;
      const SafetensorsFile& f = ck.shard_for(name);
      const Tensor q = f.load(name);
      const Tensor scale = ck.shard_for(name + "_scale_inv").load(name + "_scale_inv");
      const std::int64_t rows = o.size(0), cols = o.size(1), bc = scale.size(1);
      double max_rel = 0;
      for (std::int64_t i = 0; i < rows; ++i) {
        for (std::int64_t j = 0; j < cols; ++j) {
          const float direct = q.ptr<fp8_e4m3>()[i * cols + j].to_float() *
                               scale.ptr<float>()[(i / 128) * bc + j / 128];
          ASSERT_EQ(g.ptr<bf16>()[i * cols + j].bits, bf16::from_float(direct).bits)
              << s.name << " " << i << "," << j;
          const float ov = o.ptr<bf16>()[i * cols + j].to_float();
          const float gv = g.ptr<bf16>()[i * cols + j].to_float();
          const float block_scale = scale.ptr<float>()[(i / 128) * bc + j / 128];
          ASSERT_LE(std::abs(gv - ov), std::max(std::abs(ov) * 0.07f, block_scale * 0.002f))
              << s.name << " " << i << "," << j;
          if (std::abs(ov) > 0.25f * block_scale * 448.0f) {
            max_rel = std::max(max_rel, double(std::abs(gv - ov) / std::abs(ov)));
          }
        }
      }
      EXPECT_GT(max_rel, 0.0) << s.name << ": fp8 rounding should show";
    }
  }
}

TEST(Checkpoint, SameAsQuantiseHelpers) {
  TempDir dir;
  const AttentionConfig c = small_config();
  write_synthetic_checkpoint(dir.path().string(), c, 1, 5, true);
  const LayerWeights got = load_layer_weights(Checkpoint::open(dir.path().string()), 0);
  const LayerWeights orig = LayerWeights::synthetic(c, 5);
  const Fp8BlockWeight q = quantize_fp8_blocks(orig.o_proj);
  EXPECT_TRUE(bit_identical(got.o_proj, dequantize_fp8_blocks(q.values, q.scale_inv)));
}

// Rewrites one shard of a synthetic checkpoint with `edit` applied to its entries.
void rewrite_shard(const fs::path& path,
                   const std::function<void(std::vector<SafetensorsEntry>&)>& edit) {
  std::vector<Tensor> keep;
  std::vector<SafetensorsEntry> entries;
  {
    const SafetensorsFile f = SafetensorsFile::open(path.string());
    for (const auto& [name, info] : f.tensors()) {
      keep.push_back(f.load(name));
      entries.push_back({name, info.dtype, info.shape, tensor_bytes(keep.back())});
    }
  }
  edit(entries);
  write_safetensors(path.string(), entries);
}

class CheckpointErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    write_synthetic_checkpoint(dir_.path().string(), small_config(), 1, 1, fp8());
  }
  virtual bool fp8() const { return false; }
  fs::path shard() const { return dir_.path() / "model-00001-of-00001.safetensors"; }
  std::string load_error() const {
    return thrown_message<CheckpointError>(
        [&] { load_layer_weights(Checkpoint::open(dir_.path().string()), 0); });
  }
  TempDir dir_;
};

class Fp8CheckpointErrors : public CheckpointErrors {
 protected:
  bool fp8() const override { return true; }
};

// A shard that is a FIFO is refused at once (opening it would wait for a writer forever); one
// that is a symbolic link is followed only inside the checkpoint folder.
TEST_F(CheckpointErrors, ShardsMustBeRegularFilesInsideTheFolder) {
  TempDir elsewhere;
  const fs::path outside = elsewhere.path() / "shard.safetensors";
  fs::rename(shard(), outside);
  fs::create_symlink(outside, shard());
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model-00001-of-00001.safetensors"),
                                  HasSubstr("outside the checkpoint folder")));
  // A link to a file inside the folder is fine.
  fs::remove(shard());
  fs::rename(outside, dir_.path() / "real.safetensors");
  fs::create_symlink(dir_.path() / "real.safetensors", shard());
  EXPECT_NO_THROW(load_layer_weights(Checkpoint::open(dir_.path().string()), 0));
  fs::remove(shard());
  ASSERT_EQ(::mkfifo(shard().c_str(), 0600), 0);
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model-00001-of-00001.safetensors"),
                                  HasSubstr("not a regular file")));
}

// The index, config.json and a single-file checkpoint's weights get the shards' checks: a FIFO is
// refused before it is opened (reading it would wait for a writer forever), a symbolic link is
// followed only inside the checkpoint folder.
TEST_F(CheckpointErrors, IndexConfigAndSingleFileMustBeRegularFilesInsideTheFolder) {
  const std::string dir = dir_.path().string();
  const auto open_error = [&] {
    return thrown_message<CheckpointError>([&] { Checkpoint::open(dir); });
  };
  const fs::path index = dir_.path() / "model.safetensors.index.json";
  const std::string index_text = read_all(index.string());
  fs::remove(index);
  ASSERT_EQ(::mkfifo(index.c_str(), 0600), 0);
  EXPECT_THAT(open_error(),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("not a regular file")));
  fs::remove(index);
  write_all(index.string(), index_text);

  TempDir elsewhere;
  const fs::path config = dir_.path() / "config.json";
  fs::rename(config, elsewhere.path() / "config.json");
  fs::create_symlink(elsewhere.path() / "config.json", config);
  EXPECT_THAT(open_error(), AllOf(HasSubstr("config.json"), HasSubstr("outside the checkpoint")));
  fs::remove(config);
  fs::rename(elsewhere.path() / "config.json", config);
  EXPECT_NO_THROW(Checkpoint::open(dir));

  // A single-file checkpoint (no index) whose weights file links out of the folder.
  fs::remove(index);
  fs::rename(shard(), elsewhere.path() / "model.safetensors");
  fs::create_symlink(elsewhere.path() / "model.safetensors", dir_.path() / "model.safetensors");
  EXPECT_THAT(open_error(),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("outside the checkpoint folder")));
}

TEST_F(CheckpointErrors, MissingTensorInShard) {
  rewrite_shard(shard(), [](std::vector<SafetensorsEntry>& e) {
    std::erase_if(e, [](const SafetensorsEntry& x) {
      return x.name == "model.layers.0.self_attn.kv_b_proj.weight";
    });
  });
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model-00001-of-00001.safetensors"),
                                  HasSubstr("model.layers.0.self_attn.kv_b_proj.weight")));
}

TEST_F(CheckpointErrors, MissingTensorInIndex) {
  const fs::path index = dir_.path() / "model.safetensors.index.json";
  std::string text = read_all(index.string());
  const std::string key = "\"model.layers.0.self_attn.indexer.wk.weight\"";
  const auto pos = text.find(key);
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, key.size(), "\"renamed\"");
  write_all(index.string(), text);
  EXPECT_THAT(load_error(),
              AllOf(HasSubstr(dir_.path().string()),
                    HasSubstr("no tensor model.layers.0.self_attn.indexer.wk.weight")));
}

TEST_F(CheckpointErrors, MissingShard) {
  fs::remove(shard());
  EXPECT_THAT(load_error(),
              AllOf(HasSubstr("model-00001-of-00001.safetensors"), HasSubstr("does not exist"),
                    HasSubstr("model.layers.0.self_attn.q_a_proj.weight")));
}

TEST_F(CheckpointErrors, TruncatedShard) {
  const std::string bytes = read_all(shard().string());
  write_all(shard().string(), bytes.substr(0, bytes.size() / 2));
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model-00001-of-00001.safetensors"),
                                  HasSubstr("truncated"), HasSubstr("tensor model.layers.0.")));
}

TEST_F(CheckpointErrors, BadHeader) {
  std::string bytes = read_all(shard().string());
  bytes[9] = '#';
  write_all(shard().string(), bytes);
  EXPECT_THAT(load_error(),
              AllOf(HasSubstr("model-00001-of-00001.safetensors"), HasSubstr("not valid JSON")));
}

TEST_F(CheckpointErrors, WrongShape) {
  const AttentionConfig c = small_config();
  std::vector<std::uint16_t> bytes(std::size_t(c.q_lora_rank + 1));
  rewrite_shard(shard(), [&](std::vector<SafetensorsEntry>& e) {
    for (SafetensorsEntry& x : e) {
      if (x.name == "model.layers.0.self_attn.q_a_layernorm.weight") {
        x.shape = {c.q_lora_rank + 1};
        x.bytes = std::as_bytes(std::span(bytes));
      }
    }
  });
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model-00001-of-00001.safetensors"),
                                  HasSubstr("model.layers.0.self_attn.q_a_layernorm.weight"),
                                  HasSubstr("has shape [97], the config needs [96]")));
}

TEST_F(CheckpointErrors, F32NormIsRoundedToBf16) {
  const AttentionConfig c = small_config();
  std::vector<float> values(std::size_t(c.kv_lora_rank));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 1.0f + 0.001f * float(i);
  rewrite_shard(shard(), [&](std::vector<SafetensorsEntry>& e) {
    for (SafetensorsEntry& x : e) {
      if (x.name == "model.layers.0.self_attn.kv_a_layernorm.weight") {
        x.dtype = DType::f32;
        x.bytes = std::as_bytes(std::span(values));
      }
    }
  });
  const LayerWeights w = load_layer_weights(Checkpoint::open(dir_.path().string()), 0);
  ASSERT_EQ(w.kv_a_layernorm.dtype(), DType::bf16);
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(w.kv_a_layernorm.ptr<bf16>()[i].bits, bf16::from_float(values[i]).bits);
  }
}

TEST_F(CheckpointErrors, NoIndexNoSingleFile) {
  fs::remove(dir_.path() / "model.safetensors.index.json");
  EXPECT_THAT(thrown_message<CheckpointError>([&] { Checkpoint::open(dir_.path().string()); }),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("model.safetensors")));
}

TEST_F(CheckpointErrors, BadIndex) {
  write_all((dir_.path() / "model.safetensors.index.json").string(), "{\"weight_map\": [1]}");
  EXPECT_THAT(thrown_message<CheckpointError>([&] { Checkpoint::open(dir_.path().string()); }),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("weight_map")));
}

TEST_F(CheckpointErrors, ShardOutsideTheFolder) {
  for (const char* file : {"../elsewhere.safetensors", "/tmp/elsewhere.safetensors"}) {
    write_all((dir_.path() / "model.safetensors.index.json").string(),
              std::string("{\"weight_map\": {\"x\": \"") + file + "\"}}");
    EXPECT_THAT(thrown_message<CheckpointError>([&] { Checkpoint::open(dir_.path().string()); }),
                AllOf(HasSubstr("weight_map.x"), HasSubstr("inside the checkpoint folder")))
        << file;
  }
}

TEST_F(CheckpointErrors, Fp8WithoutQuantizationConfig) {
  const std::string name = "model.layers.0.self_attn.o_proj.weight";
  const Fp8BlockWeight q = quantize_fp8_blocks(LayerWeights::synthetic(small_config(), 1).o_proj);
  rewrite_shard(shard(), [&](std::vector<SafetensorsEntry>& e) {
    for (SafetensorsEntry& x : e) {
      if (x.name == name) {
        x.dtype = DType::fp8_e4m3;
        x.bytes = tensor_bytes(q.values);
      }
    }
  });
  EXPECT_THAT(load_error(), AllOf(HasSubstr(name), HasSubstr("no fp8 quantization_config")));
}

TEST_F(Fp8CheckpointErrors, MissingScaleInv) {
  const std::string name = "model.layers.0.self_attn.kv_b_proj.weight";
  rewrite_shard(shard(), [&](std::vector<SafetensorsEntry>& e) {
    std::erase_if(e, [&](const SafetensorsEntry& x) { return x.name == name + "_scale_inv"; });
  });
  // The index still lists the scale: the shard is where it is missing.
  EXPECT_THAT(load_error(),
              AllOf(HasSubstr("model-00001-of-00001.safetensors"), HasSubstr(name + "_scale_inv")));
  // With the index entry gone too, the message names the weight that needs it.
  const fs::path index = dir_.path() / "model.safetensors.index.json";
  std::string text = read_all(index.string());
  const std::string key = "\"" + name + "_scale_inv\"";
  text.replace(text.find(key), key.size(), "\"dropped\"");
  write_all(index.string(), text);
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model-00001-of-00001.safetensors"),
                                  HasSubstr("fp8 tensor " + name + " has no scale tensor " + name +
                                            "_scale_inv")));
}

TEST_F(Fp8CheckpointErrors, WrongScaleShape) {
  const std::string name = "model.layers.0.self_attn.q_a_proj.weight_scale_inv";
  std::vector<float> scale(4, 1.0f);
  rewrite_shard(shard(), [&](std::vector<SafetensorsEntry>& e) {
    for (SafetensorsEntry& x : e) {
      if (x.name == name) {
        x.shape = {2, 2};
        x.bytes = std::as_bytes(std::span(scale));
      }
    }
  });
  EXPECT_THAT(load_error(), AllOf(HasSubstr(name), HasSubstr("[2, 2]"), HasSubstr("[1, 3]")));
}

void set_quantization_config(const fs::path& dir, const std::string& qc) {
  const fs::path path = dir / "config.json";
  std::string text = read_all(path.string());
  const auto pos = text.find("\"quantization_config\"");
  ASSERT_NE(pos, std::string::npos);
  const auto end = text.find('}', pos);
  text.replace(pos, end + 1 - pos, "\"quantization_config\": " + qc);
  write_all(path.string(), text);
}

TEST_F(Fp8CheckpointErrors, BadQuantizationConfig) {
  struct Case {
    const char* json;
    const char* field;
  };
  for (const Case& k : {
           Case{R"({"quant_method": "gptq", "fmt": "e4m3", "weight_block_size": [128, 128]})",
                "quantization_config.quant_method"},
           Case{R"({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]})",
                "quantization_config.fmt"},
           Case{R"({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [64, 128]})",
                "quantization_config.weight_block_size"},
           Case{R"("fp8")", "quantization_config"},
       }) {
    set_quantization_config(dir_.path(), k.json);
    const std::string msg =
        thrown_message<ConfigError>([&] { Checkpoint::open(dir_.path().string()); });
    EXPECT_THAT(msg, AllOf(HasSubstr("config.json"), HasSubstr(k.field))) << k.json;
  }
}

TEST(QuantizationConfig, AbsentOrNullMeansBf16) {
  EXPECT_FALSE(quantization_config_from_json_text("{}", "c.json").fp8);
  EXPECT_FALSE(
      quantization_config_from_json_text(R"({"quantization_config": null})", "c.json").fp8);
  EXPECT_TRUE(quantization_config_from_json_text(
                  R"({"quantization_config": {"quant_method": "fp8"}})", "c.json")
                  .fp8);
}

TEST(Checkpoint, MissingConfig) {
  TempDir dir;
  EXPECT_THAT(thrown_message<CheckpointError>([&] { Checkpoint::open(dir.path().string()); }),
              HasSubstr("no config.json"));
}

}  // namespace
}  // namespace dsattn
