// libFuzzer target: a safetensors file's bytes, framed as SafetensorsFile frames them (8-byte little-endian
// header size, header, data), through parse_safetensors_header. Anything it accepts must meet the format's rules
// (checked again here, independently); anything else must be refused with std::invalid_argument. Crashes,
// sanitizer reports, other exceptions, slow inputs and large allocations are findings.
//
// The library source is included, not linked: the target builds with clang and the sanitizers alone, without the
// CUDA parts of the library, and can check internals (UTF-8 validation) directly.
#include "../../cpp/src/safetensors.cpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 8) return 0;
  std::uint64_t header_size = 0;
  for (int b = 7; b >= 0; --b) header_size = (header_size << 8) | data[b];
  if (header_size > size - 8) return 0;  // SafetensorsFile refuses this before parsing
  const std::string_view header(reinterpret_cast<const char*>(data) + 8, header_size);
  const std::uint64_t data_size = size - 8 - header_size;
  std::map<std::string, clusterfusion::SafetensorsEntry> tensors;
  try {
    tensors = clusterfusion::parse_safetensors_header(header, data_size);
  } catch (const std::invalid_argument& e) {
    require(std::strlen(e.what()) < 4096);  // messages stay short, whatever the input
    return 0;
  }
  // Accepted: check the rules again.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& [name, e] : tensors) {
    require(name != "__metadata__");
    require(clusterfusion::valid_utf8(name));
    require(e.shape.size() <= clusterfusion::kMaxSafetensorsRank);
    unsigned __int128 bytes = clusterfusion::dtype_bytes(e.dtype);
    require(bytes != 0);
    for (const int64_t extent : e.shape) {
      require(extent >= 0);
      bytes *= static_cast<std::uint64_t>(extent);
      if (bytes >> 64) bytes = ~static_cast<unsigned __int128>(0);  // saturate: still must not match
    }
    require(e.begin <= e.end && e.end <= data_size);
    require(bytes == e.end - e.begin);
    ranges.emplace_back(e.begin, e.end);
  }
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t covered = 0;
  for (const auto& [begin, end] : ranges) {
    require(begin == covered);
    covered = end;
  }
  require(covered == data_size);
  return 0;
}
