// The safetensors reader and its JSON parser, on files and headers written here: values and conversions to
// float16, and every malformed input refused with a message naming what is wrong.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <new>
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
      {"1.2.3", "JSON: malformed number at byte 0"},  // never the text itself: it may be any file's bytes
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

// ---- Hostile input: what the Hugging Face reader refuses is refused, in linear time and bounded memory. ----

namespace {

std::string thrown_by_header(const std::string& header, std::uint64_t data_size) {
  return cf_test::thrown_message<std::invalid_argument>([&] { cf::parse_safetensors_header(header, data_size); });
}

double seconds_of(const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

enum class Outcome { Refused = 0, OutOfMemory = 1, Accepted = 2, Other = 3 };

// Runs `fn` in a child process whose address space may grow by `budget` bytes at most (RLIMIT_AS over what it
// has at the fork): Refused when fn throws std::invalid_argument, OutOfMemory when it runs out.
Outcome in_bounded_memory(std::size_t budget, const std::function<void()>& fn) {
  std::size_t vm_kb = 0;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmSize:", 0) == 0) vm_kb = std::stoull(line.substr(7));
  }
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child == 0) {
    const rlimit limit{vm_kb * 1024 + budget, vm_kb * 1024 + budget};
    setrlimit(RLIMIT_AS, &limit);
    int code = int(Outcome::Other);
    try {
      fn();
      code = int(Outcome::Accepted);
    } catch (const std::invalid_argument&) {
      code = int(Outcome::Refused);
    } catch (const std::bad_alloc&) {
      code = int(Outcome::OutOfMemory);
    } catch (...) {
    }
    _exit(code);
  }
  int wstatus = 0;
  for (int waited_ms = 0; waitpid(child, &wstatus, WNOHANG) == 0; waited_ms += 10) {
    if (waited_ms > 60000) {  // stuck (a fork of a process with threads): no verdict
      kill(child, SIGKILL);
      waitpid(child, &wstatus, 0);
      return Outcome::Other;
    }
    usleep(10000);
  }
  return WIFEXITED(wstatus) ? Outcome(WEXITSTATUS(wstatus)) : Outcome::Other;
}

// A unique scratch directory, removed at the end of the test.
struct ScratchDir {
  fs::path path = fs::temp_directory_path() / ("cf_st_dir_" + std::to_string(::getpid()) + "_" +
                                               std::to_string(cf_test::uniform_int(0, 1 << 30)));
  ScratchDir() { fs::create_directories(path); }
  ~ScratchDir() { fs::remove_all(path); }
};

std::string u8_tensor(const std::string& name, std::uint64_t begin, std::uint64_t end) {
  return "\"" + name + "\": {\"dtype\": \"U8\", \"shape\": [" + std::to_string(end - begin) + "], \"data_offsets\": [" +
         std::to_string(begin) + ", " + std::to_string(end) + "]}";
}

}  // namespace

TEST(SafetensorsHostile, SizesThatOverflowAreRefused) {
  // The byte count wraps to 2 (what the offsets give), the element count to 0.
  std::string msg = thrown_by_header(
      R"({"t": {"dtype": "F16", "shape": [119537721, 77158673929], "data_offsets": [0, 2]}})", 2);
  EXPECT_NE(msg.find("tensor 't'.shape: [119537721, 77158673929] of F16 takes more than 2^64 bytes"),
            std::string::npos)
      << msg;
  msg = thrown_by_header(R"({"t": {"dtype": "F16", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0);
  EXPECT_NE(msg.find("tensor 't'.shape: [4294967296, 4294967296] has more than 2^64 elements"), std::string::npos)
      << msg;
  // The element count fits, the byte count (2^62 * 4) does not.
  msg = thrown_by_header(R"({"t": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0);
  EXPECT_NE(msg.find("tensor 't'.shape: [4611686018427387904] of F32 takes more than 2^64 bytes"), std::string::npos)
      << msg;
  // Extents past int64 (the shape's type) and offsets past uint64.
  msg = thrown_by_header(R"({"t": {"dtype": "U8", "shape": [0, 9223372036854775808], "data_offsets": [0, 0]}})", 0);
  EXPECT_NE(msg.find("tensor 't'.shape[1]: expected a non-negative integer below 2^63"), std::string::npos) << msg;
  msg = thrown_by_header(R"({"t": {"dtype": "U8", "shape": [0], "data_offsets": [0, 18446744073709551616]}})", 0);
  EXPECT_NE(msg.find("tensor 't'.data_offsets[1]: expected a non-negative integer below 2^64"), std::string::npos)
      << msg;
  // A zero extent makes any other one fit (the Hugging Face reader takes this too).
  const auto ok = cf::parse_safetensors_header(
      R"({"t": {"dtype": "U8", "shape": [0, 9223372036854775807], "data_offsets": [0, 0]}})", 0);
  EXPECT_EQ(ok.at("t").shape, (std::vector<int64_t>{0, INT64_MAX}));
}

TEST(SafetensorsHostile, NumbersMustBeIntegerTokens) {
  // 1.0, 1e0 and -0 are numbers, not the integers the format has (the Hugging Face reader refuses them too).
  for (const char* extent : {"1.0", "1e0", "-0", "\"1\"", "null"}) {
    const std::string msg = thrown_by_header(
        std::string(R"({"t": {"dtype": "U8", "shape": [)") + extent + R"(], "data_offsets": [0, 1]}})", 1);
    EXPECT_NE(msg.find("tensor 't'.shape[0]: expected a non-negative integer"), std::string::npos) << extent << ": " << msg;
  }
}

TEST(SafetensorsHostile, ALongNameWithAMillionDimensionsIsRefusedFast) {
  // 58 s before: a label naming the tensor and the dimension was built for every dimension.
  const std::string name(1 << 20, 'n');
  std::string shape = "1";
  for (int d = 1; d < (1 << 20); ++d) shape += ",1";
  const std::string header =
      "{\"" + name + "\": {\"dtype\": \"F16\", \"shape\": [" + shape + "], \"data_offsets\": [0, 2]}}";
  ASSERT_GT(header.size(), 3u << 20);
  std::string msg;
  const double seconds = seconds_of([&] { msg = thrown_by_header(header, 2); });
  EXPECT_LT(seconds, 2.0);  // a few ms
  EXPECT_NE(msg.find(".shape: more than 8 dimensions"), std::string::npos) << msg.substr(0, 300);
  EXPECT_LT(msg.size(), 400u);  // the name is shortened
  EXPECT_NE(msg.find("...(1048576 bytes)'"), std::string::npos);

  // The same as a file.
  const fs::path path = write_file("cf_st_rank", header, "ab");
  const double file_seconds = seconds_of([&] {
    cf_test::thrown_message<std::invalid_argument>([&] { cf::SafetensorsFile f(path.string()); });
  });
  EXPECT_LT(file_seconds, 2.0);
  fs::remove(path);

  // Eight dimensions are taken.
  const auto ok = cf::parse_safetensors_header(
      R"({"t": {"dtype": "F16", "shape": [1, 1, 1, 1, 1, 1, 1, 1], "data_offsets": [0, 2]}})", 2);
  EXPECT_EQ(ok.at("t").shape.size(), 8u);
}

TEST(SafetensorsHostile, ManyTensorsWithLongNamesAreReadInLinearTime) {
  // 2000 tensors with 4 KB names and 8 dimensions each: 8 MB of header, parsed in well under a second.
  std::string header = "{";
  for (int t = 0; t < 2000; ++t) {
    header += (t ? ", \"" : "\"") + std::string(4096, 'a' + t % 26) + std::to_string(t) +
              R"(": {"dtype": "U8", "shape": [1, 1, 1, 1, 1, 1, 1, 1], "data_offsets": [)" + std::to_string(t) + ", " +
              std::to_string(t + 1) + "]}";
  }
  header += "}";
  std::size_t count = 0;
  const double seconds = seconds_of([&] { count = cf::parse_safetensors_header(header, 2000).size(); });
  EXPECT_EQ(count, 2000u);
  EXPECT_LT(seconds, 2.0);
}

TEST(SafetensorsHostile, MetadataIsCheckedNotBuilt) {
  // A 16 MiB header {"__metadata__": [0,0,...]}: before, an 8-million-value tree (~1 GB; the 100 MiB one grew to
  // 6.4 GB). Now refused at the '[': the Hugging Face reader takes only null or an object of strings.
  std::string header = R"({"__metadata__": [0)";
  header.reserve(16 << 20);
  while (header.size() < (16u << 20)) header += ",0";
  header += "]}";
  std::string msg;
  const double seconds = seconds_of([&] { msg = thrown_by_header(header, 0); });
  EXPECT_LT(seconds, 2.0);
  EXPECT_NE(msg.find("header: __metadata__: expected null or an object of strings"), std::string::npos) << msg;

  // A 16 MiB metadata object of strings is read in place: no more than 64 MB of memory for either.
  std::string strings = R"({"__metadata__": {"format": "pt")";
  for (int k = 0; strings.size() < (16u << 20); ++k)
    strings += ", \"k" + std::to_string(k) + "\": \"" + std::string(k % 50, 'v') + "\"";
  strings += "}}";
  if (!kSanitized) {
    EXPECT_EQ(in_bounded_memory(64 << 20, [&] { cf::parse_safetensors_header(header, 0); }), Outcome::Refused);
    EXPECT_EQ(in_bounded_memory(64 << 20, [&] { cf::parse_safetensors_header(strings, 0); }), Outcome::Accepted);
  }
  EXPECT_TRUE(cf::parse_safetensors_header(strings, 0).empty());
  // The issue's own case, 100 MiB, is past the format's limit: refused before anything is read (a sparse file).
  ScratchDir dir;
  const fs::path huge = dir.path / "huge.safetensors";
  {
    std::string prefix;
    put<std::uint64_t>(prefix, 100u << 20);
    std::ofstream(huge, std::ios::binary).write(prefix.data(), 8);
  }
  fs::resize_file(huge, 8 + (100u << 20));
  msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::SafetensorsFile f(huge.string()); });
  EXPECT_NE(msg.find("its first 8 bytes give no header size of at most 100000000 bytes"), std::string::npos) << msg;
  EXPECT_TRUE(cf::parse_safetensors_header(R"({"__metadata__": null})", 0).empty());
  for (const char* bad : {R"({"__metadata__": {"k": 1}})", R"({"__metadata__": "x"})", R"({"__metadata__": {"k": {}}})"}) {
    EXPECT_NE(thrown_by_header(bad, 0).find("__metadata__: expected null or an object of strings"), std::string::npos)
        << bad;
  }
  EXPECT_NE(thrown_by_header(R"({"__metadata__": {}, "__metadata__": {}})", 0).find("__metadata__ given twice"),
            std::string::npos);
}

TEST(SafetensorsHostile, ParseJsonBuildsABoundedTree) {
  // kMaxJsonValues values in all: the array and its items.
  std::string most = "[0";
  for (std::size_t k = 2; k < cf::kMaxJsonValues; ++k) most += ",0";
  most += "]";
  EXPECT_EQ(cf::parse_json(most).items.size(), cf::kMaxJsonValues - 1);
  const std::string one_more = most.substr(0, most.size() - 1) + ",0]";
  const std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::parse_json(one_more); });
  EXPECT_NE(msg.find("JSON: more than 1048576 values at byte"), std::string::npos) << msg;
  // 16 MiB of [0,0,...] was ~1 GB of JsonValue before; now refused after 2 MB of text, in bounded memory.
  std::string big = "[0";
  big.reserve(16 << 20);
  while (big.size() < (16u << 20)) big += ",0";
  big += "]";
  if (!kSanitized) {
    EXPECT_EQ(in_bounded_memory(256 << 20, [&] { cf::parse_json(big); }), Outcome::Refused);
  }
  EXPECT_LT(seconds_of([&] { cf_test::thrown_message<std::invalid_argument>([&] { cf::parse_json(big); }); }), 2.0);
}

TEST(SafetensorsHostile, NamesAreUniqueAndUtf8) {
  std::string msg = thrown_by_header("{" + u8_tensor("a", 0, 1) + ", " + u8_tensor("a", 1, 2) + "}", 2);
  EXPECT_NE(msg.find("tensor 'a': named twice in the header"), std::string::npos) << msg;
  // Names that differ in their bytes only through an escape are the same name.
  msg = thrown_by_header("{" + u8_tensor("a", 0, 1) + ", " + u8_tensor("\\u0061", 1, 2) + "}", 2);
  EXPECT_NE(msg.find("tensor 'a': named twice in the header"), std::string::npos) << msg;
  // A stray continuation byte, an overlong '/', an encoded surrogate, a truncated sequence, above U+10FFFF.
  for (const std::string bad : {"a\xff", "\xc0\xaf", "\xed\xa0\x80", "\xe2\x82", "\xf4\x90\x80\x80"}) {
    msg = thrown_by_header("{" + u8_tensor(bad, 0, 1) + "}", 1);
    EXPECT_NE(msg.find("tensor '"), std::string::npos) << msg;
    EXPECT_NE(msg.find("': the name is not UTF-8"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(bad), std::string::npos) << "the bytes are escaped: " << msg;
  }
  msg = thrown_by_header("{" + u8_tensor("a\xff", 0, 1) + "}", 1);
  EXPECT_NE(msg.find("tensor 'a\\xFF': the name is not UTF-8"), std::string::npos) << msg;
  // A lone surrogate escape, in a name or anywhere else.
  msg = thrown_by_header("{" + u8_tensor("\\udc00", 0, 1) + "}", 1);
  EXPECT_NE(msg.find("JSON: unpaired surrogate"), std::string::npos) << msg;
  msg = thrown_by_header("{\"__metadata__\": {\"k\": \"\xff\"}}", 0);
  EXPECT_NE(msg.find("JSON: invalid UTF-8 in a string at byte 24"), std::string::npos) << msg;
  // Valid UTF-8 and escapes are names like any other; control characters are escaped in messages.
  const auto ok = cf::parse_safetensors_header(
      "{" + u8_tensor("\xc3\xa9\xf0\x9f\x98\x80", 0, 1) + ", " + u8_tensor("\\u0000\\n", 1, 2) + "}", 2);
  EXPECT_TRUE(ok.count("\xc3\xa9\xf0\x9f\x98\x80"));
  EXPECT_TRUE(ok.count(std::string("\0\n", 2)));
  msg = thrown_by_header("{" + u8_tensor("\\u0000\\n'", 1, 2) + "}", 2);
  EXPECT_NE(msg.find("tensor '\\x00\\x0A\\x27'.data_offsets"), std::string::npos) << msg;
  // A tensor's fields, each once.
  msg = thrown_by_header(R"({"t": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}})", 1);
  EXPECT_NE(msg.find("tensor 't'.dtype: given twice"), std::string::npos) << msg;
}

TEST(SafetensorsHostile, RangesTileTheDataSection) {
  struct Case {
    std::string header;
    std::uint64_t data_size;
    const char* message;
  };
  const Case cases[] = {
      {"{" + u8_tensor("a", 0, 2) + ", " + u8_tensor("b", 1, 2) + "}", 2,
       "tensor 'b'.data_offsets: [1, 2] overlaps tensor 'a' at [0, 2]"},
      {"{" + u8_tensor("a", 0, 2) + ", " + u8_tensor("b", 0, 2) + "}", 2,
       "tensor 'b'.data_offsets: [0, 2] overlaps tensor 'a' at [0, 2]"},
      {"{" + u8_tensor("a", 1, 2) + "}", 2, "tensor 'a'.data_offsets: [1, 2] leaves bytes [0, 1) of the data section to no tensor"},
      {"{" + u8_tensor("a", 0, 1) + ", " + u8_tensor("b", 2, 3) + "}", 3,
       "tensor 'b'.data_offsets: [2, 3] leaves bytes [1, 2) of the data section to no tensor"},
      {"{" + u8_tensor("a", 0, 1) + "}", 3,
       "header: bytes [1, 3) of the 3-byte data section belong to no tensor (the last one, 'a', ends at byte 1)"},
      {"{}", 3, "header: bytes [0, 3) of the 3-byte data section belong to no tensor"},
      {"{" + u8_tensor("a", 0, 4) + "}", 3, "tensor 'a'.data_offsets: [0, 4] is not a range within the 3-byte data section"},
      {R"({"a": {"dtype": "U8", "shape": [0], "data_offsets": [2, 1]}})", 3,
       "tensor 'a'.data_offsets: [2, 1] is not a range within the 3-byte data section"},
      // A tensor of no bytes inside another one.
      {"{" + u8_tensor("a", 0, 2) + ", " + u8_tensor("z", 1, 1) + "}", 2,
       "tensor 'z'.data_offsets: [1, 1] overlaps tensor 'a' at [0, 2]"},
  };
  for (const Case& c : cases) {
    const std::string msg = thrown_by_header(c.header, c.data_size);
    EXPECT_NE(msg.find(c.message), std::string::npos) << c.header << ": " << msg;
  }
}

TEST(SafetensorsHostile, WhatTheReferenceReaderTakesIsTaken) {
  // Tensors of no bytes sharing offsets, in any member order; unknown members; a rank-0 tensor; padding after the
  // object (the Hugging Face writer pads the header with spaces to a multiple of 8 bytes).
  const std::string header = "{" + u8_tensor("c", 1, 3) + ", " + u8_tensor("z0", 0, 0) + ", " + u8_tensor("z1", 0, 0) +
                             ", " + u8_tensor("z3", 3, 3) +
                             R"(, "s": {"extra": [1, {"x": null}], "dtype": "I8", "shape": [], "data_offsets": [0, 1]},)"
                             R"( "__metadata__": {"format": "pt"}})" +
                             "     ";
  const auto t = cf::parse_safetensors_header(header, 3);
  EXPECT_EQ(t.size(), 5u);
  EXPECT_TRUE(t.at("s").shape.empty());
  EXPECT_EQ(t.at("c").begin, 1u);
  EXPECT_TRUE(cf::parse_safetensors_header("{}", 0).empty());
  EXPECT_TRUE(cf::parse_safetensors_header(" {} ", 0).empty());
}

TEST(SafetensorsHostile, EveryFileOfTheSeedCorpusIsRead) {
  // tests/fuzz/corpus/safetensors: files the Hugging Face writer wrote (tests/fuzz/make_corpus.py).
  const fs::path corpus = fs::path(__FILE__).parent_path().parent_path() / "fuzz" / "corpus" / "safetensors";
  if (!fs::is_directory(corpus)) GTEST_SKIP() << "no " << corpus;
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    EXPECT_NO_THROW(cf::SafetensorsFile f(entry.path().string())) << entry.path();
    ++files;
  }
  EXPECT_GE(files, 5);
}

TEST(SafetensorsHostile, ForeignFilesAreNotQuotedOrWaitedFor) {
  ScratchDir dir;
  // Text: its first 8 bytes as a header size, which the message would have quoted.
  const fs::path text = dir.path / "passwd";
  std::ofstream(text) << "root:x:0:0:root:/root:/bin/bash\n";
  std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::SafetensorsFile f(text.string()); });
  EXPECT_NE(msg.find("not a safetensors file (its first 8 bytes give no header size of at most 100000000 bytes)"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find("3475222254926655346"), std::string::npos) << msg;  // "root:x:0" as a number
  // A FIFO (with a writer, so that the old code's open did not block) or a directory is no file to read.
  const fs::path fifo = dir.path / "model.safetensors";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const int writer = open(fifo.c_str(), O_RDWR | O_NONBLOCK);
  ASSERT_GE(writer, 0);
  msg = cf_test::thrown_message<std::runtime_error>([&] { cf::SafetensorsFile f(fifo.string()); });
  EXPECT_NE(msg.find(fifo.string() + ": not a regular file"), std::string::npos) << msg;
  close(writer);
  msg = cf_test::thrown_message<std::runtime_error>([&] { cf::SafetensorsFile f(dir.path.string()); });
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
}

TEST(SafetensorsHostile, TheIndexNamesOnlyFilesInsideTheCheckpoint) {
  ScratchDir root;
  const fs::path dir = root.path / "ckpt";
  fs::create_directories(dir / "sub");
  const fs::path secret = root.path / "secret.safetensors";
  std::ofstream(secret) << "SECRET-BYTES-OF-ANOTHER-FILE";
  const auto index_with = [&](const std::string& file) {
    std::ofstream(dir / "model.safetensors.index.json", std::ios::trunc)
        << R"({"metadata": {"total_size": 4}, "weight_map": {"a": "model-1.safetensors", "b": ")" + file + R"("}})";
    return cf_test::thrown_message<std::invalid_argument>([&] { cf::checkpoint_files(dir.string()); });
  };
  struct Case {
    std::string file, message;
  };
  fs::create_symlink(secret, dir / "link.safetensors");
  fs::create_symlink("../secret.safetensors", dir / "relative-link.safetensors");
  fs::create_symlink("..", dir / "up");
  fs::create_symlink(root.path / "missing", dir / "dangling.safetensors");
  fs::create_symlink(root.path / "missing", dir / "dangling-dir");
  const Case cases[] = {
      {"../secret.safetensors", "has a '..' component"},
      {"sub/../../secret.safetensors", "has a '..' component"},
      {secret.string(), "is an absolute path"},
      {"/etc/passwd", "is an absolute path"},
      {"link.safetensors", "resolves outside the checkpoint directory"},
      {"relative-link.safetensors", "resolves outside the checkpoint directory"},
      {"up/secret.safetensors", "resolves outside the checkpoint directory"},
      {".", "resolves outside the checkpoint directory"},
      {"", "is not a file name"},
      // Links that cannot be followed now could lead anywhere once their target exists.
      {"dangling.safetensors", "is behind a symbolic link that cannot be followed"},
      {"dangling-dir/model.safetensors", "is behind a symbolic link that cannot be followed"},
  };
  for (const Case& c : cases) {
    const std::string msg = index_with(c.file);
    EXPECT_NE(msg.find("model.safetensors.index.json: weight_map['b']: '"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.message), std::string::npos) << c.file << ": " << msg;
    EXPECT_EQ(msg.find("SECRET"), std::string::npos) << msg;
  }
  // Inside: a subdirectory, "./", a link to another file of the directory.
  std::ofstream(dir / "sub/model-2.safetensors") << "x";
  fs::create_symlink("sub/model-2.safetensors", dir / "inner-link.safetensors");
  std::ofstream(dir / "model.safetensors.index.json", std::ios::trunc)
      << R"({"weight_map": {"a": "sub/model-2.safetensors", "b": "./model-1.safetensors", "c": "inner-link.safetensors"}})";
  EXPECT_EQ(cf::checkpoint_files(dir.string()),
            (std::vector<std::string>{(dir / "sub/model-2.safetensors").string(), (dir / "./model-1.safetensors").string(),
                                      (dir / "inner-link.safetensors").string()}));
  // model.safetensors itself, linked out of the directory.
  fs::create_symlink(secret, dir / "model.safetensors");
  const std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::checkpoint_files(dir.string()); });
  EXPECT_NE(msg.find("'model.safetensors' resolves outside the checkpoint directory"), std::string::npos) << msg;
}

TEST(SafetensorsHostile, HubCacheSnapshotsLinkIntoTheirBlobs) {
  // huggingface_hub's cache: <repo>/snapshots/<revision>/<file> -> ../../blobs/<hash>.
  ScratchDir root;
  const fs::path repo = root.path / "models--org--name";
  const fs::path snapshot = repo / "snapshots" / "0123abcd";
  fs::create_directories(snapshot);
  fs::create_directories(repo / "blobs");
  std::ofstream(repo / "blobs" / "1111") << "{}";
  std::ofstream(repo / "blobs" / "2222") << "x";
  fs::create_symlink("../../blobs/1111", snapshot / "model.safetensors.index.json");
  std::ofstream(repo / "blobs" / "1111", std::ios::trunc) << R"({"weight_map": {"a": "model-1.safetensors"}})";
  fs::create_symlink("../../blobs/2222", snapshot / "model-1.safetensors");
  EXPECT_EQ(cf::checkpoint_files(snapshot.string()), (std::vector<std::string>{(snapshot / "model-1.safetensors").string()}));
  fs::create_symlink("../../blobs/2222", snapshot / "model.safetensors");
  EXPECT_EQ(cf::checkpoint_files(snapshot.string()), (std::vector<std::string>{(snapshot / "model.safetensors").string()}));
  // Out of the blobs, even from a snapshot: refused.
  fs::remove(snapshot / "model.safetensors");
  std::ofstream(root.path / "other") << "x";
  fs::create_symlink("../../../other", snapshot / "model-2.safetensors");
  std::ofstream(repo / "blobs" / "1111", std::ios::trunc) << R"({"weight_map": {"a": "model-2.safetensors"}})";
  const std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::checkpoint_files(snapshot.string()); });
  EXPECT_NE(msg.find("resolves outside the checkpoint directory"), std::string::npos) << msg;
}

TEST(SafetensorsHostile, TheIndexIsCheckedNotBuilt) {
  ScratchDir dir;
  const auto refused = [&](const std::string& index) {
    std::ofstream(dir.path / "model.safetensors.index.json", std::ios::trunc) << index;
    return cf_test::thrown_message<std::invalid_argument>([&] { cf::checkpoint_files(dir.path.string()); });
  };
  EXPECT_NE(refused(R"({"weight_map": {"a": 1}})").find("weight_map['a']: expected a file name"), std::string::npos);
  EXPECT_NE(refused(R"({"metadata": {}})").find("expected a \"weight_map\" object"), std::string::npos);
  EXPECT_NE(refused(R"({"weight_map": {}, "weight_map": {}})").find("\"weight_map\" given twice"), std::string::npos);
  EXPECT_NE(refused(R"({"weight_map": {"a": "x.safetensors"}} x)").find("JSON: unexpected text after the value"),
            std::string::npos);
  // Large metadata and many tensors of few shards: read in place, fast.
  std::string index = R"({"metadata": {"total_size": 1, "junk": [0)";
  while (index.size() < (8u << 20)) index += ",0";
  index += R"(]}, "weight_map": {)";
  for (int t = 0; t < 100000; ++t)
    index += (t ? ", \"model.layers." : "\"model.layers.") + std::to_string(t) + ".weight\": \"model-0000" +
             std::to_string(t % 3) + ".safetensors\"";
  index += "}}";
  std::ofstream(dir.path / "model.safetensors.index.json", std::ios::trunc) << index;
  std::vector<std::string> files;
  EXPECT_LT(seconds_of([&] { files = cf::checkpoint_files(dir.path.string()); }), 2.0);
  EXPECT_EQ(files.size(), 3u);
}

TEST(Json, StrictGrammarAndUtf8) {
  for (const char* bad : {"01", "1.", ".5", "+1", "1e", "1e+", "-", "--1", "0x10", "1e5e5", "[1,]", "{\"a\":1,}", "\"\\udc00\"",
                          "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "1e400", "-1e400", "\"\t\"", "nul", "[1 2]"}) {
    EXPECT_THROW(cf::parse_json(bad), std::invalid_argument) << bad;
  }
  EXPECT_EQ(cf::parse_json("-0.5e-3").number, -0.0005);
  EXPECT_EQ(cf::parse_json("1E+2").number, 100.0);
  EXPECT_EQ(cf::parse_json("\"\xf4\x8f\xbf\xbf\"").text, "\xf4\x8f\xbf\xbf");
  EXPECT_EQ(cf::parse_json("[\"\\u00e9\\/\"]").items[0].text, "\xc3\xa9/");
}
