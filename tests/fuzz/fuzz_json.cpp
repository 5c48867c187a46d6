// libFuzzer target: any text through the JSON parsers of the library (parse_json's tree, the reader that checks
// and skips, the shard index reader) and through cf_generate's config.json reader (examples/hf_config.hpp).
// Accepted input must give UTF-8 strings and finite numbers; the tree parser and the skipping reader must agree
// on what is JSON; the only exception allowed is std::invalid_argument. Crashes, sanitizer reports (including
// float-to-int conversions out of range), other exceptions, slow inputs and large allocations are findings.
//
// The library source is included, not linked, to reach its internals (see fuzz_safetensors.cpp).
#include "../../cpp/src/safetensors.cpp"

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../../examples/hf_config.hpp"

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

std::size_t check_tree(const clusterfusion::JsonValue& v) {
  using Kind = clusterfusion::JsonValue::Kind;
  std::size_t values = 1;
  if (v.kind == Kind::Number) require(std::isfinite(v.number));
  if (v.kind == Kind::String) require(clusterfusion::valid_utf8(v.text));
  for (const auto& item : v.items) values += check_tree(item);
  for (const auto& [key, member] : v.members) {
    require(clusterfusion::valid_utf8(key));
    values += check_tree(member);
  }
  return values;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  bool tree_ok = false, skip_ok = false;
  try {
    const clusterfusion::JsonValue v = clusterfusion::parse_json(text);
    tree_ok = true;
    require(check_tree(v) <= clusterfusion::kMaxJsonValues);
    try {
      const clusterfusion::ModelConfig c = cf_example::model_config_from_json(v, "config.json");
      require(c.heads > 0 && c.head_dim > 0 && c.kv_heads > 0 && c.heads % c.kv_heads == 0);
    } catch (const std::invalid_argument&) {
    }
  } catch (const std::invalid_argument&) {
  }
  try {
    clusterfusion::JsonReader r(text);
    r.skip_value(0);
    r.finish();
    skip_ok = true;
  } catch (const std::invalid_argument&) {
  }
  require(tree_ok == skip_ok || (skip_ok && size > 2 * clusterfusion::kMaxJsonValues - 2));
  try {
    const auto files = clusterfusion::index_files(text);
    require(skip_ok);
    for (const auto& [file, tensor] : files) require(clusterfusion::valid_utf8(file) && clusterfusion::valid_utf8(tensor));
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
