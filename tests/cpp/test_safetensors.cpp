// The safetensors reader and its JSON parser, on files and headers written here: values and conversions to
// float16, and every malformed input refused with a message naming what is wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <cuda_fp16.h>

#include "clusterfusion/safetensors.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;
namespace fs = std::filesystem;

namespace {

std::uint16_t bits_of(__half h) {
  const __half_raw raw = h;
  return raw.x;
}

// Little-endian bytes of a value.
template <typename T>
void put(std::string& out, T value) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &value, sizeof(T));
  out.append(reinterpret_cast<const char*>(b), sizeof(T));
}

// A safetensors file: the 8-byte header size, the header, the data.
fs::path write_file(const std::string& name, const std::string& header, const std::string& data) {
  const fs::path path = fs::temp_directory_path() / (name + "_" + std::to_string(cf_test::uniform_int(0, 1 << 30)));
  std::string bytes;
  put<std::uint64_t>(bytes, header.size());
  bytes += header + data;
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

TEST(Json, ParsesEveryKindOfValue) {
  const cf::JsonValue v = cf::parse_json(
      R"( {"a": [1, -2.5e3, true, false, null], "s": "q\"\\\/\n\u00e9\ud83d\ude00", "o": {}, "e": []} )");
  ASSERT_EQ(v.kind, cf::JsonValue::Kind::Object);
  ASSERT_EQ(v.members.size(), 4u);
  const cf::JsonValue& a = *v.find("a");
  ASSERT_EQ(a.items.size(), 5u);
  EXPECT_EQ(a.items[0].number, 1.0);
  EXPECT_EQ(a.items[1].number, -2500.0);
  EXPECT_TRUE(a.items[2].boolean);
  EXPECT_EQ(a.items[3].kind, cf::JsonValue::Kind::Bool);
  EXPECT_FALSE(a.items[3].boolean);
  EXPECT_EQ(a.items[4].kind, cf::JsonValue::Kind::Null);
  EXPECT_EQ(v.find("s")->text, "q\"\\/\n\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(v.find("o")->kind, cf::JsonValue::Kind::Object);
  EXPECT_EQ(v.find("e")->kind, cf::JsonValue::Kind::Array);
  EXPECT_EQ(v.find("missing"), nullptr);
}

TEST(Json, MalformedTextNamesTheOffset) {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"", "JSON: unexpected end of text at byte 0"},
      {"{\"a\" 1}", "JSON: expected ':' at byte 5"},
      {"[1, 2", "JSON: unexpected end of text at byte 5"},
      {"\"abc", "JSON: unterminated string"},
      {"\"a\\x\"", "JSON: unknown escape at byte 3"},
      {"\"\\ud800\"", "JSON: unpaired surrogate"},
      {"tru", "JSON: expected true at byte 0"},
      {"1 2", "JSON: unexpected text after the value at byte 2"},
      {"-", "JSON: expected a value at byte 0"},
      {"1.2.3", "JSON: malformed number '1.2.3' at byte 0"},
      {"{1: 2}", "JSON: expected a member name at byte 1"},
  };
  for (const Case& c : cases) {
    const std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::parse_json(c.text); });
    EXPECT_NE(msg.find(c.message), std::string::npos) << "input " << c.text << ": " << msg;
  }
  const std::string deep(100, '[');
  EXPECT_NE(cf_test::thrown_message<std::invalid_argument>([&] { cf::parse_json(deep); }).find("nesting deeper"),
            std::string::npos);
}

TEST(Safetensors, ReadsAndConvertsToFloat16) {
  const int n = cf_test::uniform_int(1, 40);
  std::vector<float> values(2 * n);
  for (float& x : values) x = float(cf_test::uniform(-70000.0, 70000.0) / std::pow(10.0, cf_test::uniform_int(0, 8)));
  // The same values stored three ways: F32, BF16 (truncated F32 bits), F16 (rounded).
  std::string f32, bf16, f16;
  std::vector<std::uint16_t> want_f32, want_bf16, want_f16;
  for (float x : values) {
    put<float>(f32, x);
    std::uint32_t bits;
    std::memcpy(&bits, &x, 4);
    const std::uint16_t b = static_cast<std::uint16_t>(bits >> 16);
    put<std::uint16_t>(bf16, b);
    const std::uint32_t widened = std::uint32_t(b) << 16;
    float as_bf16;
    std::memcpy(&as_bf16, &widened, 4);
    want_bf16.push_back(bits_of(__float2half_rn(as_bf16)));
    want_f32.push_back(bits_of(__float2half_rn(x)));
    const std::uint16_t h = bits_of(__float2half_rn(x));
    put<std::uint16_t>(f16, h);
    want_f16.push_back(h);
  }
  const std::size_t a = f32.size(), b = a + bf16.size(), c = b + f16.size();
  const std::string shape = "[2, " + std::to_string(n) + "]";
  const std::string header = R"({"__metadata__": {"format": "pt"}, "w32": {"dtype": "F32", "shape": )" + shape +
                             R"(, "data_offsets": [0, )" + std::to_string(a) + R"(]}, "wbf": {"dtype": "BF16", "shape": )" +
                             shape + R"(, "data_offsets": [)" + std::to_string(a) + ", " + std::to_string(b) +
                             R"(]}, "w16": {"dtype": "F16", "shape": )" + shape + R"(, "data_offsets": [)" +
                             std::to_string(b) + ", " + std::to_string(c) + R"(]}, "ids": {"dtype": "I64", "shape": [1], "data_offsets": [)" +
                             std::to_string(c) + ", " + std::to_string(c + 8) + "]}}";
  std::string ids;
  put<std::int64_t>(ids, 7);
  const fs::path path = write_file("cf_st", header, f32 + bf16 + f16 + ids);
  const cf::SafetensorsFile file(path.string());
  EXPECT_EQ(file.tensors().size(), 4u);  // __metadata__ is not a tensor
  EXPECT_EQ(file.at("wbf").shape, (std::vector<int64_t>{2, n}));
  EXPECT_EQ(file.at("w16").dtype, "F16");
  EXPECT_EQ(file.read_half("w32"), want_f32);
  EXPECT_EQ(file.read_half("wbf"), want_bf16);
  EXPECT_EQ(file.read_half("w16"), want_f16);
  EXPECT_NE(cf_test::thrown_message<std::invalid_argument>([&] { file.read_half("ids"); })
                .find("tensor 'ids' has dtype I64, expected F16, BF16 or F32"),
            std::string::npos);
  EXPECT_NE(cf_test::thrown_message<std::out_of_range>([&] { file.at("nope"); }).find("no tensor 'nope'"),
            std::string::npos);
  fs::remove(path);
}

TEST(Safetensors, MalformedHeadersNameTheTensorAndField) {
  struct Case {
    const char* header;
    const char* message;
  };
  const Case cases[] = {
      {R"([1])", "header: expected a JSON object"},
      {R"({"t": 3})", "tensor 't': expected an object"},
      {R"({"t": {"shape": [1], "data_offsets": [0, 2]}})", "tensor 't'.dtype: expected a string"},
      {R"({"t": {"dtype": "F17", "shape": [1], "data_offsets": [0, 2]}})", "tensor 't'.dtype: unknown dtype 'F17'"},
      {R"({"t": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}})",
       "tensor 't'.shape[0]: expected a non-negative integer"},
      {R"({"t": {"dtype": "F16", "shape": [1.5], "data_offsets": [0, 2]}})", "tensor 't'.shape[0]"},
      {R"({"t": {"dtype": "F16", "shape": [1], "data_offsets": [0]}})", "tensor 't'.data_offsets: expected [begin, end]"},
      {R"({"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 2]}})",
       "tensor 't'.data_offsets: 2 bytes, expected 4 for its shape and dtype F16"},
      {R"({"t": {"dtype": "F16", "shape": [8], "data_offsets": [0, 16]}})",
       "tensor 't'.data_offsets: [0, 16] is not a range within the 8-byte data section"},
  };
  for (const Case& c : cases) {
    const std::string msg =
        cf_test::thrown_message<std::invalid_argument>([&] { cf::parse_safetensors_header(c.header, 8); });
    EXPECT_NE(msg.find(c.message), std::string::npos) << c.header << ": " << msg;
  }
}

TEST(Safetensors, BrokenFilesNameThePath) {
  const fs::path missing = fs::temp_directory_path() / "cf_st_does_not_exist.safetensors";
  EXPECT_NE(cf_test::thrown_message<std::runtime_error>([&] { cf::SafetensorsFile f(missing.string()); })
                .find(missing.string() + ": cannot open"),
            std::string::npos);

  // A header size past the end of the file.
  std::string bytes;
  put<std::uint64_t>(bytes, 1000);
  bytes += "{}";
  const fs::path truncated = fs::temp_directory_path() / ("cf_st_trunc_" + std::to_string(cf_test::uniform_int(0, 1 << 30)));
  std::ofstream(truncated, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::SafetensorsFile f(truncated.string()); });
  EXPECT_NE(msg.find("header size 1000 does not fit the 10-byte file"), std::string::npos) << msg;
  fs::remove(truncated);

  // A tensor whose bytes the file does not hold: the path, then the tensor.
  const fs::path short_data = write_file("cf_st_short", R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", "abcd");
  const std::string range = cf_test::thrown_message<std::invalid_argument>([&] { cf::SafetensorsFile f(short_data.string()); });
  EXPECT_NE(range.find(short_data.string() + ": tensor 't'.data_offsets"), std::string::npos) << range;
  fs::remove(short_data);
}

TEST(Safetensors, CheckpointFilesFromASingleFileOrAnIndex) {
  const fs::path dir = fs::temp_directory_path() / ("cf_ckpt_" + std::to_string(cf_test::uniform_int(0, 1 << 30)));
  fs::create_directories(dir);
  EXPECT_NE(cf_test::thrown_message<std::runtime_error>([&] { cf::checkpoint_files(dir.string()); })
                .find("neither model.safetensors nor model.safetensors.index.json"),
            std::string::npos);
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata": {"total_size": 4}, "weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}})";
  EXPECT_EQ(cf::checkpoint_files(dir.string()),
            (std::vector<std::string>{(dir / "model-00001-of-00002.safetensors").string(),
                                      (dir / "model-00002-of-00002.safetensors").string()}));
  std::ofstream(dir / "model.safetensors") << "x";
  EXPECT_EQ(cf::checkpoint_files(dir.string()), (std::vector<std::string>{(dir / "model.safetensors").string()}));
  fs::remove_all(dir);
}

}  // namespace
