#include "clusterfusion/safetensors.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <stdexcept>
#include <system_error>

#include <cuda_fp16.h>

namespace clusterfusion {

namespace {

namespace fs = std::filesystem;

// The length of the UTF-8 sequence at s[i], or 0 when it is not one (RFC 3629: shortest form, no surrogates,
// nothing above U+10FFFF).
std::size_t utf8_length(std::string_view s, std::size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  const unsigned char second = static_cast<unsigned char>(s[i + 1]);
  if (second < lo || second > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// Text from a file, for an error message: quoted, with quotes, backslashes, control characters and (in text that
// is not UTF-8) bytes above 0x7F escaped as \xHH, and shortened past 200 bytes.
std::string shown(std::string_view s) {
  constexpr std::size_t kShown = 200;
  std::string_view head = s;
  if (s.size() > kShown) {
    std::size_t n = kShown;  // not inside a UTF-8 sequence
    while (n > kShown - 3 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
    head = s.substr(0, n);
  }
  const bool utf8 = valid_utf8(head);
  std::string out = "'";
  for (const char ch : head) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '\'' || c == '\\' || c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8)) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02X", c);
      out += hex;
    } else {
      out += ch;
    }
  }
  if (head.size() < s.size()) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out + "'";
}

// A cursor over JSON text (RFC 8259) that checks the grammar as it goes: values can be read, or skipped without
// building anything. Nesting is limited so that hostile input cannot exhaust the stack.
class JsonReader {
 public:
  static constexpr int kMaxDepth = 64;

  explicit JsonReader(std::string_view text) : s_(text) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("JSON: " + what + " at byte " + std::to_string(i_));
  }

  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  // The next character after whitespace; fails at the end of the text.
  char peek() {
    skip_space();
    if (i_ >= s_.size()) fail("unexpected end of text");
    return s_[i_];
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }

  bool consume(char c) {
    if (peek() != c) return false;
    ++i_;
    return true;
  }

  // Only whitespace may follow the value.
  void finish() {
    skip_space();
    if (i_ != s_.size()) fail("unexpected text after the value");
  }

  void literal(const char* word) {
    const std::size_t n = std::strlen(word);
    if (s_.substr(i_, n) != word) fail(std::string("expected ") + word);
    i_ += n;
  }

  // The string at the cursor, decoded into `*out` (appended) or, when `out` is null, only checked. Raw bytes
  // must be UTF-8 unless `check_utf8` is false (the caller then checks them, to say which name is wrong).
  void string(std::string* out, bool check_utf8 = true) {
    expect('"');
    for (;;) {
      const std::size_t run = i_;  // plain bytes, copied at once
      while (i_ < s_.size()) {
        const unsigned char c = static_cast<unsigned char>(s_[i_]);
        if (c == '"' || c == '\\' || c < 0x20) break;
        if (c < 0x80 || !check_utf8) {
          ++i_;
        } else {
          const std::size_t n = utf8_length(s_, i_);
          if (n == 0) fail("invalid UTF-8 in a string");
          i_ += n;
        }
      }
      if (out != nullptr) out->append(s_.data() + run, i_ - run);
      if (i_ >= s_.size()) fail("unterminated string");
      const char c = s_[i_];
      if (c == '"') {
        ++i_;
        return;
      }
      if (c != '\\') fail("control character in a string");
      if (++i_ >= s_.size()) fail("unterminated string");
      char plain = 0;
      switch (s_[i_++]) {
        case '"': plain = '"'; break;
        case '\\': plain = '\\'; break;
        case '/': plain = '/'; break;
        case 'b': plain = '\b'; break;
        case 'f': plain = '\f'; break;
        case 'n': plain = '\n'; break;
        case 'r': plain = '\r'; break;
        case 't': plain = '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp < 0xE000) fail("unpaired surrogate");
          if (cp >= 0xD800 && cp < 0xDC00) {  // a high surrogate: its low half must follow
            if (s_.substr(i_, 2) != "\\u") fail("unpaired surrogate");
            i_ += 2;
            const unsigned low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          if (out != nullptr) append_utf8(*out, cp);
          continue;
        }
        default:
          --i_;
          fail("unknown escape");
      }
      if (out != nullptr) *out += plain;
    }
  }

  std::string string() {
    std::string s;
    string(&s);
    return s;
  }

  // The number token at the cursor, checked against the JSON grammar; `*integer` tells whether it has neither a
  // fraction nor an exponent.
  std::string_view number_token(bool* integer = nullptr) {
    skip_space();
    const std::size_t start = i_;
    const auto digit = [&](std::size_t k) { return k < s_.size() && s_[k] >= '0' && s_[k] <= '9'; };
    const auto malformed = [&] {
      i_ = start;
      fail("malformed number");
    };
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (!digit(i_)) {
      i_ = start;
      fail("expected a value");
    }
    if (s_[i_] == '0') {
      ++i_;
    } else {
      while (digit(i_)) ++i_;
    }
    bool whole = true;
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (!digit(i_)) malformed();
      while (digit(i_)) ++i_;
      whole = false;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digit(i_)) malformed();
      while (digit(i_)) ++i_;
      whole = false;
    }
    // "01", "1.2.3", "1e5e5": the grammar stops early, but the text goes on as if it were one number.
    if (i_ < s_.size() && std::strchr("0123456789.eE+-", s_[i_]) != nullptr) malformed();
    if (integer != nullptr) *integer = whole;
    return s_.substr(start, i_ - start);
  }

  double number() {
    const std::size_t start = (skip_space(), i_);
    const std::string_view token = number_token();
    double v = 0.0;
    const auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), v);
    if (ec != std::errc() || end != token.data() + token.size()) {
      i_ = start;
      fail("number out of range");
    }
    return v;
  }

  // A JSON integer in [0, max] at the cursor: true and `*out`. False when the value is anything else (another
  // kind of value, which is not consumed; a negative, fractional or larger number, which is).
  bool unsigned_integer(std::uint64_t max, std::uint64_t* out) {
    const char c = peek();
    if (c != '-' && !(c >= '0' && c <= '9')) return false;
    bool whole = false;
    const std::string_view token = number_token(&whole);
    if (!whole || token[0] == '-') return false;
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), v);
    if (ec != std::errc() || end != token.data() + token.size() || v > max) return false;
    *out = v;
    return true;
  }

  // Checks the value at the cursor and moves past it, building nothing.
  void skip_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    switch (peek()) {
      case '{':
        ++i_;
        if (consume('}')) return;
        for (;;) {
          if (peek() != '"') fail("expected a member name");
          string(nullptr);
          expect(':');
          skip_value(depth + 1);
          if (consume(',')) continue;
          expect('}');
          return;
        }
      case '[':
        ++i_;
        if (consume(']')) return;
        for (;;) {
          skip_value(depth + 1);
          if (consume(',')) continue;
          expect(']');
          return;
        }
      case '"': string(nullptr); return;
      case 't': literal("true"); return;
      case 'f': literal("false"); return;
      case 'n': literal("null"); return;
      default: number(); return;
    }
  }

 private:
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

  std::string_view s_;
  std::size_t i_ = 0;
};

// parse_json: the reader building a JsonValue tree, at most kMaxJsonValues values of it.
class JsonTreeParser {
 public:
  explicit JsonTreeParser(std::string_view text) : r_(text) {}

  JsonValue document() {
    JsonValue v = value(0);
    r_.finish();
    return v;
  }

 private:
  JsonValue value(int depth) {
    if (depth > JsonReader::kMaxDepth) r_.fail("nesting deeper than " + std::to_string(JsonReader::kMaxDepth));
    if (++values_ > kMaxJsonValues) r_.fail("more than " + std::to_string(kMaxJsonValues) + " values");
    JsonValue v;
    switch (r_.peek()) {
      case '{':
        v.kind = JsonValue::Kind::Object;
        r_.expect('{');
        if (r_.consume('}')) return v;
        for (;;) {
          if (r_.peek() != '"') r_.fail("expected a member name");
          std::string key = r_.string();
          r_.expect(':');
          v.members.emplace_back(std::move(key), value(depth + 1));
          if (r_.consume(',')) continue;
          r_.expect('}');
          return v;
        }
      case '[':
        v.kind = JsonValue::Kind::Array;
        r_.expect('[');
        if (r_.consume(']')) return v;
        for (;;) {
          v.items.push_back(value(depth + 1));
          if (r_.consume(',')) continue;
          r_.expect(']');
          return v;
        }
      case '"':
        v.kind = JsonValue::Kind::String;
        r_.string(&v.text);
        return v;
      case 't':
        r_.literal("true");
        v.kind = JsonValue::Kind::Bool;
        v.boolean = true;
        return v;
      case 'f':
        r_.literal("false");
        v.kind = JsonValue::Kind::Bool;
        return v;
      case 'n':
        r_.literal("null");
        return v;
      default:
        v.kind = JsonValue::Kind::Number;
        v.number = r_.number();
        return v;
    }
  }

  JsonReader r_;
  std::size_t values_ = 0;
};

std::size_t dtype_bytes(const std::string& dtype) {
  static const std::map<std::string, std::size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},     {"I32", 4},     {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},      {"BOOL", 1},    {"F8_E4M3", 1},
      {"F8_E5M2", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

std::string range_text(const SafetensorsEntry& e) {
  return "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
}

// "__metadata__": null or an object of strings (what the Hugging Face reader takes), checked and skipped.
void skip_metadata(JsonReader& r) {
  const auto refuse = [] {
    throw std::invalid_argument("header: __metadata__: expected null or an object of strings");
  };
  const char c = r.peek();
  if (c == 'n') return r.literal("null");
  if (c != '{') refuse();
  r.expect('{');
  if (r.consume('}')) return;
  for (;;) {
    if (r.peek() != '"') r.fail("expected a member name");
    r.string(nullptr);
    r.expect(':');
    if (r.peek() != '"') refuse();
    r.string(nullptr);
    if (r.consume(',')) continue;
    r.expect('}');
    return;
  }
}

// One tensor's description, `{"dtype": ..., "shape": [...], "data_offsets": [begin, end]}`, into `e`. Messages
// are built only when something is wrong: a header can hold many tensors with long names.
void read_tensor(JsonReader& r, const std::string& name, std::uint64_t data_size, SafetensorsEntry& e) {
  const auto refuse = [&name](const std::string& field, const std::string& what) {
    throw std::invalid_argument("tensor " + shown(name) + field + ": " + what);
  };
  if (r.peek() != '{') refuse("", "expected an object");
  r.expect('{');
  bool have_dtype = false, have_shape = false, have_offsets = false;
  if (!r.consume('}')) {
    for (;;) {
      if (r.peek() != '"') r.fail("expected a member name");
      const std::string key = r.string();
      r.expect(':');
      if (key == "dtype") {
        if (have_dtype) refuse(".dtype", "given twice");
        have_dtype = true;
        if (r.peek() != '"') refuse(".dtype", "expected a string");
        r.string(&e.dtype);
      } else if (key == "shape") {
        if (have_shape) refuse(".shape", "given twice");
        have_shape = true;
        if (r.peek() != '[') refuse(".shape", "expected an array");
        r.expect('[');
        if (!r.consume(']')) {
          for (;;) {
            if (e.shape.size() == kMaxSafetensorsRank)
              refuse(".shape", "more than " + std::to_string(kMaxSafetensorsRank) + " dimensions");
            std::uint64_t extent = 0;
            if (!r.unsigned_integer(std::numeric_limits<int64_t>::max(), &extent))
              refuse(".shape[" + std::to_string(e.shape.size()) + "]", "expected a non-negative integer below 2^63");
            e.shape.push_back(static_cast<int64_t>(extent));
            if (r.consume(',')) continue;
            r.expect(']');
            break;
          }
        }
      } else if (key == "data_offsets") {
        if (have_offsets) refuse(".data_offsets", "given twice");
        have_offsets = true;
        if (r.peek() != '[') refuse(".data_offsets", "expected [begin, end]");
        r.expect('[');
        for (int k = 0; k < 2; ++k) {
          if (k == 1 && !r.consume(',')) refuse(".data_offsets", "expected [begin, end]");
          std::uint64_t& offset = k == 0 ? e.begin : e.end;
          if (!r.unsigned_integer(std::numeric_limits<std::uint64_t>::max(), &offset))
            refuse(".data_offsets[" + std::to_string(k) + "]", "expected a non-negative integer below 2^64");
        }
        if (!r.consume(']')) refuse(".data_offsets", "expected [begin, end]");
      } else {
        r.skip_value(2);  // the Hugging Face reader ignores members it does not know
      }
      if (r.consume(',')) continue;
      r.expect('}');
      break;
    }
  }
  if (!have_dtype) refuse(".dtype", "expected a string");
  if (!have_shape) refuse(".shape", "expected an array");
  if (!have_offsets) refuse(".data_offsets", "expected [begin, end]");
  const std::size_t size = dtype_bytes(e.dtype);
  if (size == 0) refuse(".dtype", "unknown dtype " + shown(e.dtype));
  std::uint64_t elements = 1, bytes = 0;
  for (const int64_t extent : e.shape) {
    if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(extent), &elements))
      refuse(".shape", shape_text(e.shape) + " has more than 2^64 elements");
  }
  if (__builtin_mul_overflow(elements, std::uint64_t(size), &bytes))
    refuse(".shape", shape_text(e.shape) + " of " + e.dtype + " takes more than 2^64 bytes");
  if (e.begin > e.end || e.end > data_size) {
    refuse(".data_offsets", range_text(e) + " is not a range within the " + std::to_string(data_size) +
                                "-byte data section");
  }
  if (e.end - e.begin != bytes) {
    refuse(".data_offsets", std::to_string(e.end - e.begin) + " bytes, expected " + std::to_string(bytes) +
                                " for its shape and dtype " + e.dtype);
  }
}

// The ranges, ordered, must tile [0, data_size): what the Hugging Face reader requires. Tensors of no bytes may
// share an offset with each other and with the start of a tensor.
void check_layout(const std::map<std::string, SafetensorsEntry>& tensors, std::uint64_t data_size) {
  using Tensor = std::map<std::string, SafetensorsEntry>::value_type;
  std::vector<const Tensor*> order;
  order.reserve(tensors.size());
  for (const Tensor& t : tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const Tensor* a, const Tensor* b) {
    return std::make_pair(a->second.begin, a->second.end) < std::make_pair(b->second.begin, b->second.end);
  });
  std::uint64_t covered = 0;
  const Tensor* previous = nullptr;  // the tensor that ends at `covered`
  for (const Tensor* t : order) {
    const SafetensorsEntry& e = t->second;
    if (e.begin < covered) {
      throw std::invalid_argument("tensor " + shown(t->first) + ".data_offsets: " + range_text(e) +
                                  " overlaps tensor " + shown(previous->first) + " at " +
                                  range_text(previous->second));
    }
    if (e.begin > covered) {
      throw std::invalid_argument("tensor " + shown(t->first) + ".data_offsets: " + range_text(e) +
                                  " leaves bytes [" + std::to_string(covered) + ", " + std::to_string(e.begin) +
                                  ") of the data section to no tensor");
    }
    if (e.end > covered || previous == nullptr) previous = t;
    covered = e.end;
  }
  if (covered != data_size) {
    throw std::invalid_argument("header: bytes [" + std::to_string(covered) + ", " + std::to_string(data_size) +
                                ") of the " + std::to_string(data_size) + "-byte data section belong to no tensor" +
                                (previous ? " (the last one, " + shown(previous->first) + ", ends at byte " +
                                                std::to_string(covered) + ")"
                                          : std::string()));
  }
}

// The shard files an index's "weight_map" names, each once, in order, with the first tensor naming each.
// Everything else in the index is checked and skipped.
std::vector<std::pair<std::string, std::string>> index_files(std::string_view text) {
  JsonReader r(text);
  if (r.peek() != '{') throw std::invalid_argument("expected a JSON object");
  r.expect('{');
  std::vector<std::pair<std::string, std::string>> files;
  std::set<std::string> seen;
  bool found = false;
  if (!r.consume('}')) {
    for (;;) {
      if (r.peek() != '"') r.fail("expected a member name");
      const std::string key = r.string();
      r.expect(':');
      if (key != "weight_map") {
        r.skip_value(1);
      } else {
        if (found) throw std::invalid_argument("\"weight_map\" given twice");
        found = true;
        if (r.peek() != '{') throw std::invalid_argument("expected a \"weight_map\" object");
        r.expect('{');
        if (!r.consume('}')) {
          for (;;) {
            if (r.peek() != '"') r.fail("expected a member name");
            std::string tensor = r.string();
            r.expect(':');
            if (r.peek() != '"') throw std::invalid_argument("weight_map[" + shown(tensor) + "]: expected a file name");
            std::string file = r.string();
            if (seen.insert(file).second) files.emplace_back(std::move(file), std::move(tensor));
            if (r.consume(',')) continue;
            r.expect('}');
            break;
          }
        }
      }
      if (r.consume(',')) continue;
      r.expect('}');
      break;
    }
  }
  r.finish();
  if (!found) throw std::invalid_argument("expected a \"weight_map\" object");
  return files;
}

// Where a checkpoint's files may resolve to: the directory itself and, for a snapshot of the Hugging Face hub
// cache (<repo>/snapshots/<revision>, whose files link to ../../blobs/<hash>), <repo>/blobs.
std::vector<fs::path> checkpoint_roots(const fs::path& dir) {
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot resolve the directory: " + ec.message());
  std::vector<fs::path> roots{real};
  if (real.parent_path().filename() == "snapshots") roots.push_back(real.parent_path().parent_path() / "blobs");
  return roots;
}

// dir / name, refused (std::invalid_argument "<where>: '<name>' ...") unless it is a file name that stays inside
// the checkpoint: relative, no "..", and no symbolic link leading out of `roots`.
std::string contained(const fs::path& dir, const std::vector<fs::path>& roots, const std::string& name,
                      const std::string& where) {
  const auto refuse = [&](const std::string& why) {
    throw std::invalid_argument(where + ": " + shown(name) + " " + why);
  };
  if (name.empty() || name.find('\0') != std::string::npos) refuse("is not a file name");
  const fs::path relative(name);
  if (relative.has_root_path()) refuse("is an absolute path; expected a file in the checkpoint directory");
  for (const fs::path& part : relative) {
    if (part == "..") refuse("has a '..' component; expected a file in the checkpoint directory");
  }
  const fs::path path = dir / relative;
  std::error_code ec;
  const fs::path real = fs::canonical(path, ec);
  if (ec) {
    // A missing file is reported when it is opened, unless a link on the way leads where it cannot be followed
    // now (and might lead anywhere later).
    fs::path prefix = dir;
    for (const fs::path& part : relative) {
      prefix /= part;
      const fs::file_status status = fs::symlink_status(prefix, ec);
      if (fs::is_symlink(status)) refuse("is behind a symbolic link that cannot be followed");
      if (!fs::exists(status)) break;
    }
    return path.string();
  }
  const bool inside = std::any_of(roots.begin(), roots.end(), [&](const fs::path& root) {
    const fs::path rest = real.lexically_relative(root);
    return !rest.empty() && rest != "." && *rest.begin() != "..";
  });
  if (!inside) refuse("resolves outside the checkpoint directory");
  return path.string();
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

JsonValue parse_json(std::string_view text) { return JsonTreeParser(text).document(); }

std::map<std::string, SafetensorsEntry> parse_safetensors_header(std::string_view json, std::uint64_t data_size) {
  if (json.size() > kMaxSafetensorsHeader) {
    throw std::invalid_argument("header: " + std::to_string(json.size()) + " bytes, more than the format's " +
                                std::to_string(kMaxSafetensorsHeader));
  }
  JsonReader r(json);
  if (r.peek() != '{') throw std::invalid_argument("header: expected a JSON object");
  r.expect('{');
  std::map<std::string, SafetensorsEntry> tensors;
  bool metadata = false;
  if (!r.consume('}')) {
    for (;;) {
      if (r.peek() != '"') r.fail("expected a member name");
      std::string name;
      r.string(&name, /*check_utf8=*/false);
      if (!valid_utf8(name)) throw std::invalid_argument("tensor " + shown(name) + ": the name is not UTF-8");
      r.expect(':');
      if (name == "__metadata__") {
        if (metadata) throw std::invalid_argument("header: __metadata__ given twice");
        metadata = true;
        skip_metadata(r);
      } else {
        const auto [it, fresh] = tensors.try_emplace(std::move(name));
        if (!fresh) throw std::invalid_argument("tensor " + shown(it->first) + ": named twice in the header");
        read_tensor(r, it->first, data_size, it->second);
      }
      if (r.consume(',')) continue;
      r.expect('}');
      break;
    }
  }
  r.finish();
  check_layout(tensors, data_size);
  return tensors;
}

SafetensorsFile::SafetensorsFile(std::string path) : path_(std::move(path)) {
  std::error_code ec;
  const fs::file_status status = fs::status(path_, ec);
  if (!fs::exists(status)) throw std::runtime_error(path_ + ": cannot open");
  // Opening a FIFO or a device would block or read forever.
  if (!fs::is_regular_file(status)) throw std::runtime_error(path_ + ": not a regular file");
  std::ifstream in(path_, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path_ + ": cannot open");
  const std::streamoff end = in.tellg();
  if (end < 0) throw std::runtime_error(path_ + ": cannot read");
  const std::uint64_t file_size = static_cast<std::uint64_t>(end);
  unsigned char prefix[8];
  in.seekg(0);
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(prefix), 8))
    throw std::invalid_argument(path_ + ": not a safetensors file (shorter than its 8-byte header size)");
  std::uint64_t header_size = 0;
  for (int b = 7; b >= 0; --b) header_size = (header_size << 8) | prefix[b];
  // Past the limit, the 8 bytes are no header size: they are not quoted (they may be any file's first bytes).
  if (header_size > kMaxSafetensorsHeader) {
    throw std::invalid_argument(path_ + ": not a safetensors file (its first 8 bytes give no header size of at most " +
                                std::to_string(kMaxSafetensorsHeader) + " bytes)");
  }
  if (header_size > file_size - 8) {
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
  if (it == tensors_.end()) throw std::out_of_range(path_ + ": no tensor " + shown(name));
  return it->second;
}

std::vector<std::uint16_t> SafetensorsFile::read_half(const std::string& name) const {
  const SafetensorsEntry& e = at(name);
  const std::size_t size = dtype_bytes(e.dtype);
  if (e.dtype != "F16" && e.dtype != "BF16" && e.dtype != "F32") {
    throw std::invalid_argument(path_ + ": tensor " + shown(name) + " has dtype " + e.dtype +
                                ", expected F16, BF16 or F32");
  }
  const std::size_t count = static_cast<std::size_t>((e.end - e.begin) / size);
  std::vector<unsigned char> bytes(e.end - e.begin);
  std::ifstream in(path_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_offset_ + e.begin));
  if (!in || !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
    throw std::runtime_error(path_ + ": cannot read tensor " + shown(name));
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
  const fs::path dir(directory.empty() ? "." : directory);
  std::error_code ec;
  if (fs::exists(dir / "model.safetensors", ec)) {
    return {contained(dir, checkpoint_roots(dir), "model.safetensors", directory)};
  }
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::file_status status = fs::status(index, ec);
  if (!fs::exists(status)) {
    throw std::runtime_error(directory + ": neither model.safetensors nor model.safetensors.index.json (only "
                             "safetensors checkpoints are read)");
  }
  if (!fs::is_regular_file(status)) throw std::runtime_error(index.string() + ": not a regular file");
  const std::uintmax_t size = fs::file_size(index, ec);
  if (ec) throw std::runtime_error(index.string() + ": cannot read: " + ec.message());
  if (size > kMaxSafetensorsHeader) {
    throw std::invalid_argument(index.string() + ": " + std::to_string(size) + " bytes, more than the " +
                                std::to_string(kMaxSafetensorsHeader) + " an index may have");
  }
  std::ifstream in(index, std::ios::binary);
  if (!in) throw std::runtime_error(index.string() + ": cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::pair<std::string, std::string>> names;
  try {
    names = index_files(text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(index.string() + ": " + e.what());
  }
  const std::vector<fs::path> roots = checkpoint_roots(dir);
  std::vector<std::string> files;
  for (const auto& [file, tensor] : names)
    files.push_back(contained(dir, roots, file, index.string() + ": weight_map[" + shown(tensor) + "]"));
  return files;
}

}  // namespace clusterfusion
