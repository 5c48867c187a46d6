// Reading checkpoints in the safetensors format (what transformers' save_pretrained writes): an 8-byte
// little-endian header size, a JSON header mapping each tensor name to its dtype, shape and byte range, then the
// raw little-endian data. A checkpoint directory holds model.safetensors, or shards listed by
// model.safetensors.index.json. Host code only: no GPU is involved.
#pragma once
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

// Throws std::invalid_argument "JSON: <what> at byte <offset>" for malformed text.
JsonValue parse_json(std::string_view text);

struct SafetensorsEntry {
  std::string dtype;  // "F16", "BF16", "F32", "I64", ...
  std::vector<int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range within the data section
};

// The tensors a header describes, checked against the format's rules and a data section of `data_size` bytes:
// known dtype, non-negative integer shape, begin <= end <= data_size, end - begin = elements * dtype size.
// "__metadata__" is skipped. Throws std::invalid_argument naming the tensor and the field.
std::map<std::string, SafetensorsEntry> parse_safetensors_header(std::string_view json, std::uint64_t data_size);

class SafetensorsFile {
 public:
  // Reads and checks the header. Throws std::runtime_error when the file cannot be read and
  // std::invalid_argument when it is not valid safetensors; both messages name the path.
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
// naming the directory when it has neither.
std::vector<std::string> checkpoint_files(const std::string& directory);

}  // namespace clusterfusion
