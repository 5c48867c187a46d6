// Reading checkpoints in the safetensors format (what transformers' save_pretrained writes): an 8-byte
// little-endian header size, a JSON header mapping each tensor name to its dtype, shape and byte range, then the
// raw little-endian data. A checkpoint directory holds model.safetensors, or shards listed by
// model.safetensors.index.json. Host code only: no GPU is involved.
//
// Files come from the internet, so everything here treats them as hostile: time and memory stay linear in the
// input with small constants, every size is checked for overflow, and what the Hugging Face reader (the format's
// reference) refuses is refused here too.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace clusterfusion {

// The JSON that safetensors headers, their shard index and transformers' config.json use.
struct JsonValue {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  std::string text;
  std::vector<JsonValue> items;                             // Array
  std::vector<std::pair<std::string, JsonValue>> members;  // Object, in file order

  // The member named `key` of an object, or nullptr (also when this is not an object).
  const JsonValue* find(const std::string& key) const;
};

// The most values (numbers, strings, arrays, objects, ...) parse_json builds: a JsonValue takes ~100 bytes
// while `0,` takes 2, so without a bound a few MB of text would become GBs. A config.json has hundreds.
inline constexpr std::size_t kMaxJsonValues = std::size_t(1) << 20;

// Strict RFC 8259 JSON: UTF-8 strings (no lone surrogates), numbers of the JSON grammar within the range of a
// double, nesting at most 64 deep, at most kMaxJsonValues values. Throws std::invalid_argument
// "JSON: <what> at byte <offset>" otherwise; the message never quotes the text.
JsonValue parse_json(std::string_view text);

// The largest header the format allows (the Hugging Face reader's limit, in bytes; a 70B model's header is a
// few hundred KB).
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;
// The most dimensions a tensor may have. The weights read here have at most 2; 8 leaves room for any tensor of
// a real checkpoint (convolutions have 5) while bounding what a header can make the reader store and check.
inline constexpr std::size_t kMaxSafetensorsRank = 8;

struct SafetensorsEntry {
  std::string dtype;  // "F16", "BF16", "F32", "I64", ...
  std::vector<int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range within the data section
};

// The tensors a header describes, checked against the format's rules and a data section of `data_size` bytes,
// as the Hugging Face reader checks them: a JSON object (at most kMaxSafetensorsHeader bytes, valid UTF-8) whose
// members are "__metadata__" (null or an object of strings; skipped) and tensors, each named once, each an
// object with a known "dtype", a "shape" of at most kMaxSafetensorsRank integers below 2^63 and "data_offsets"
// [begin, end] of integers, whose byte count (elements * dtype size, without overflow) is end - begin; unknown
// members of a tensor are skipped. The ranges, in order, tile the data section exactly: no overlap, no gap, no
// byte past the end or left over (tensors of no bytes may share an offset). Throws std::invalid_argument naming
// the tensor and the field; names are quoted with non-printable bytes escaped and long ones shortened.
std::map<std::string, SafetensorsEntry> parse_safetensors_header(std::string_view json, std::uint64_t data_size);

class SafetensorsFile {
 public:
  // Reads and checks the header. Throws std::runtime_error when the file cannot be read (or is not a regular
  // file) and std::invalid_argument when it is not valid safetensors; both messages name the path.
  explicit SafetensorsFile(std::string path);

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws std::out_of_range naming the tensor and the file.
  const SafetensorsEntry& at(const std::string& name) const;
  // The tensor's elements as float16 bit patterns, converted from F16, BF16 or F32 (round to nearest even);
  // std::invalid_argument for another dtype.
  std::vector<std::uint16_t> read_half(const std::string& name) const;

 private:
  std::string path_;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, SafetensorsEntry> tensors_;
};

// The safetensors files of a checkpoint directory: model.safetensors, or the shards that
// model.safetensors.index.json lists (its "weight_map" values, each once, in order). Throws std::runtime_error
// naming the directory when it has neither. The index may name only files inside the directory: an absolute
// path, a ".." component or a symbolic link resolving elsewhere is refused (std::invalid_argument naming the
// entry; the file is never opened). The one exception is the Hugging Face hub cache, whose snapshot
// directories (.../snapshots/<revision>) link each file to ../../blobs/<hash>: targets in that blobs directory
// are accepted. The same holds for model.safetensors. An index larger than kMaxSafetensorsHeader is refused.
std::vector<std::string> checkpoint_files(const std::string& directory);

}  // namespace clusterfusion
