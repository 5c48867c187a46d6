#include "clusterfusion/safetensors.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <stdexcept>

#include <cuda_fp16.h>

namespace clusterfusion {

namespace {

// Recursive descent over the JSON grammar (RFC 8259), with a nesting limit so hostile input cannot exhaust the
// stack.
class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : s_(text) {}

  JsonValue document() {
    JsonValue v = value(0);
    skip_space();
    if (i_ != s_.size()) fail("unexpected text after the value");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("JSON: " + what + " at byte " + std::to_string(i_));
  }

  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  char peek() {
    skip_space();
    if (i_ >= s_.size()) fail("unexpected end of text");
    return s_[i_];
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }

  JsonValue value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    JsonValue v;
    switch (peek()) {
      case '{': {
        v.kind = JsonValue::Kind::Object;
        ++i_;
        if (peek() == '}') {
          ++i_;
          return v;
        }
        for (;;) {
          if (peek() != '"') fail("expected a member name");
          std::string key = string();
          expect(':');
          v.members.emplace_back(std::move(key), value(depth + 1));
          if (peek() == ',') {
            ++i_;
            continue;
          }
          expect('}');
          return v;
        }
      }
      case '[': {
        v.kind = JsonValue::Kind::Array;
        ++i_;
        if (peek() == ']') {
          ++i_;
          return v;
        }
        for (;;) {
          v.items.push_back(value(depth + 1));
          if (peek() == ',') {
            ++i_;
            continue;
          }
          expect(']');
          return v;
        }
      }
      case '"':
        v.kind = JsonValue::Kind::String;
        v.text = string();
        return v;
      case 't':
        literal("true");
        v.kind = JsonValue::Kind::Bool;
        v.boolean = true;
        return v;
      case 'f':
        literal("false");
        v.kind = JsonValue::Kind::Bool;
        return v;
      case 'n':
        literal("null");
        return v;
      default:
        v.kind = JsonValue::Kind::Number;
        v.number = number();
        return v;
    }
  }

  void literal(const char* word) {
    const std::size_t n = std::strlen(word);
    if (s_.substr(i_, n) != word) fail(std::string("expected ") + word);
    i_ += n;
  }

  double number() {
    const std::size_t start = i_;
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    const std::size_t digits = i_;
    while (i_ < s_.size() && std::strchr("0123456789.eE+-", s_[i_]) != nullptr && s_[i_] != '\0') ++i_;
    if (i_ == digits || !(s_[digits] >= '0' && s_[digits] <= '9')) {
      i_ = start;
      fail("expected a value");
    }
    const std::string token(s_.substr(start, i_ - start));
    char* end = nullptr;
    const double v = std::strtod(token.c_str(), &end);
    if (end != token.c_str() + token.size()) {
      i_ = start;
      fail("malformed number '" + token + "'");
    }
    return v;
  }

  unsigned hex4() {
    if (i_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned code = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      code <<= 4;
      if (c >= '0' && c <= '9') code |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') code |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') code |= unsigned(c - 'A' + 10);
      else fail("malformed \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) fail("unterminated string");
      const char c = s_[i_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated string");
      switch (s_[i_++]) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // a high surrogate: its low half must follow
            if (s_.substr(i_, 2) != "\\u") fail("unpaired surrogate");
            i_ += 2;
            const unsigned low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --i_;
          fail("unknown escape");
      }
    }
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

std::size_t dtype_bytes(const std::string& dtype) {
  static const std::map<std::string, std::size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},     {"I32", 4},     {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},      {"BOOL", 1},    {"F8_E4M3", 1},
      {"F8_E5M2", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

// A JSON number that is a non-negative integer below 2^53 (exact in a double).
std::uint64_t as_count(const JsonValue& v, const std::string& what) {
  if (v.kind != JsonValue::Kind::Number || v.number < 0 || v.number != std::floor(v.number) || v.number > 9007199254740992.0)
    throw std::invalid_argument(what + ": expected a non-negative integer");
  return static_cast<std::uint64_t>(v.number);
}

std::uint16_t half_bits(float f) {
  const __half_raw raw = __float2half_rn(f);
  return raw.x;
}

float from_bits(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

const JsonValue* JsonValue::find(const std::string& key) const {
  for (const auto& m : members) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

JsonValue parse_json(std::string_view text) { return JsonParser(text).document(); }

std::map<std::string, SafetensorsEntry> parse_safetensors_header(std::string_view json, std::uint64_t data_size) {
  const JsonValue root = parse_json(json);
  if (root.kind != JsonValue::Kind::Object) throw std::invalid_argument("header: expected a JSON object");
  std::map<std::string, SafetensorsEntry> tensors;
  for (const auto& [name, desc] : root.members) {
    if (name == "__metadata__") continue;
    const std::string at = "tensor '" + name + "'";
    if (desc.kind != JsonValue::Kind::Object) throw std::invalid_argument(at + ": expected an object");
    const JsonValue* dtype = desc.find("dtype");
    const JsonValue* shape = desc.find("shape");
    const JsonValue* offsets = desc.find("data_offsets");
    if (dtype == nullptr || dtype->kind != JsonValue::Kind::String)
      throw std::invalid_argument(at + ".dtype: expected a string");
    if (shape == nullptr || shape->kind != JsonValue::Kind::Array)
      throw std::invalid_argument(at + ".shape: expected an array");
    if (offsets == nullptr || offsets->kind != JsonValue::Kind::Array || offsets->items.size() != 2)
      throw std::invalid_argument(at + ".data_offsets: expected [begin, end]");
    SafetensorsEntry e;
    e.dtype = dtype->text;
    const std::size_t size = dtype_bytes(e.dtype);
    if (size == 0) throw std::invalid_argument(at + ".dtype: unknown dtype '" + e.dtype + "'");
    std::uint64_t elements = 1;
    for (std::size_t d = 0; d < shape->items.size(); ++d) {
      const std::uint64_t extent = as_count(shape->items[d], at + ".shape[" + std::to_string(d) + "]");
      e.shape.push_back(static_cast<int64_t>(extent));
      elements *= extent;
    }
    e.begin = as_count(offsets->items[0], at + ".data_offsets[0]");
    e.end = as_count(offsets->items[1], at + ".data_offsets[1]");
    if (e.begin > e.end || e.end > data_size) {
      throw std::invalid_argument(at + ".data_offsets: [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                  "] is not a range within the " + std::to_string(data_size) + "-byte data section");
    }
    if (e.end - e.begin != elements * size) {
      throw std::invalid_argument(at + ".data_offsets: " + std::to_string(e.end - e.begin) + " bytes, expected " +
                                  std::to_string(elements * size) + " for its shape and dtype " + e.dtype);
    }
    tensors.emplace(name, std::move(e));
  }
  return tensors;
}

SafetensorsFile::SafetensorsFile(std::string path) : path_(std::move(path)) {
  std::ifstream in(path_, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path_ + ": cannot open");
  const std::uint64_t file_size = static_cast<std::uint64_t>(in.tellg());
  unsigned char prefix[8];
  in.seekg(0);
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(prefix), 8))
    throw std::invalid_argument(path_ + ": not a safetensors file (shorter than its 8-byte header size)");
  std::uint64_t header_size = 0;
  for (int b = 7; b >= 0; --b) header_size = (header_size << 8) | prefix[b];
  constexpr std::uint64_t kMaxHeader = 100u << 20;  // the format's own limit
  if (header_size > kMaxHeader || header_size > file_size - 8) {
    throw std::invalid_argument(path_ + ": header size " + std::to_string(header_size) + " does not fit the " +
                                std::to_string(file_size) + "-byte file");
  }
  std::string header(header_size, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_size)))
    throw std::runtime_error(path_ + ": cannot read the header");
  data_offset_ = 8 + header_size;
  try {
    tensors_ = parse_safetensors_header(header, file_size - data_offset_);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path_ + ": " + e.what());
  }
}

const SafetensorsEntry& SafetensorsFile::at(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::out_of_range(path_ + ": no tensor '" + name + "'");
  return it->second;
}

std::vector<std::uint16_t> SafetensorsFile::read_half(const std::string& name) const {
  const SafetensorsEntry& e = at(name);
  const std::size_t size = dtype_bytes(e.dtype);
  if (e.dtype != "F16" && e.dtype != "BF16" && e.dtype != "F32") {
    throw std::invalid_argument(path_ + ": tensor '" + name + "' has dtype " + e.dtype +
                                ", expected F16, BF16 or F32");
  }
  const std::size_t count = static_cast<std::size_t>((e.end - e.begin) / size);
  std::vector<unsigned char> bytes(e.end - e.begin);
  std::ifstream in(path_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_offset_ + e.begin));
  if (!in || !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
    throw std::runtime_error(path_ + ": cannot read tensor '" + name + "'");
  std::vector<std::uint16_t> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    const unsigned char* p = bytes.data() + i * size;  // little-endian
    if (e.dtype == "F16") {
      out[i] = static_cast<std::uint16_t>(p[0] | (p[1] << 8));
    } else if (e.dtype == "BF16") {
      out[i] = half_bits(from_bits(static_cast<std::uint32_t>(p[0] | (p[1] << 8)) << 16));
    } else {
      out[i] = half_bits(from_bits(std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
                                   (std::uint32_t(p[3]) << 24)));
    }
  }
  return out;
}

std::vector<std::string> checkpoint_files(const std::string& directory) {
  namespace fs = std::filesystem;
  const fs::path dir(directory);
  if (fs::exists(dir / "model.safetensors")) return {(dir / "model.safetensors").string()};
  const fs::path index = dir / "model.safetensors.index.json";
  std::ifstream in(index, std::ios::binary);
  if (!in) {
    throw std::runtime_error(directory + ": neither model.safetensors nor model.safetensors.index.json (only "
                             "safetensors checkpoints are read)");
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  JsonValue root;
  try {
    root = parse_json(text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(index.string() + ": " + e.what());
  }
  const JsonValue* map = root.find("weight_map");
  if (map == nullptr || map->kind != JsonValue::Kind::Object)
    throw std::invalid_argument(index.string() + ": expected a \"weight_map\" object");
  std::vector<std::string> files;
  std::set<std::string> seen;
  for (const auto& [tensor, file] : map->members) {
    if (file.kind != JsonValue::Kind::String)
      throw std::invalid_argument(index.string() + ": weight_map['" + tensor + "']: expected a file name");
    if (seen.insert(file.text).second) files.push_back((dir / file.text).string());
  }
  return files;
}

}  // namespace clusterfusion
