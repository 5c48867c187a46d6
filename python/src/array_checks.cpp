#include "array_checks.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

namespace clusterfusion::python {

namespace {

std::string dtype_name(nb::dlpack::dtype dtype) {
  using Code = nb::dlpack::dtype_code;
  const char* kind = nullptr;
  switch (static_cast<Code>(dtype.code)) {
    case Code::Int: kind = "int"; break;
    case Code::UInt: kind = "uint"; break;
    case Code::Float: kind = "float"; break;
    case Code::Bfloat: kind = "bfloat"; break;
    case Code::Complex: kind = "complex"; break;
    case Code::Bool: return "bool";
    default: break;
  }
  std::string name = kind ? kind + std::to_string(dtype.bits)
                          : "dtype(code=" + std::to_string(dtype.code) + ", bits=" + std::to_string(dtype.bits) + ")";
  if (dtype.lanes != 1) name += "x" + std::to_string(dtype.lanes);
  return name;
}

// DLPack's device type numbers, as the frameworks print them.
std::string device_name(int device_type) {
  switch (device_type) {
    case nb::device::cpu::value: return "cpu";
    case nb::device::cuda::value: return "cuda";
    case nb::device::cuda_host::value: return "cuda_host (pinned host memory)";
    case nb::device::cuda_managed::value: return "cuda_managed";
    case nb::device::rocm::value: return "rocm";
    case nb::device::metal::value: return "metal";
    default: return "DLPack device type " + std::to_string(device_type);
  }
}

std::string dims_str(const int64_t* dims, std::size_t n) {
  std::string s = "[";
  for (std::size_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// C order, ignoring the strides of size-1 dimensions (torch's own definition of contiguous).
bool is_c_contiguous(const ArrayFacts& a) {
  int64_t expected = 1;
  for (std::size_t i = a.ndim; i-- > 0;) {
    if (a.shape[i] != 1 && a.strides[i] != expected) return false;
    expected *= a.shape[i];
  }
  return true;
}

[[noreturn]] void fail_type(const char* name, const std::string& expected, const std::string& got) {
  throw nb::type_error((std::string(name) + ": expected " + expected + ", got " + got).c_str());
}

[[noreturn]] void fail_value(const char* name, const std::string& expected, const std::string& got) {
  throw nb::value_error((std::string(name) + ": expected " + expected + ", got " + got).c_str());
}

}  // namespace

void check_array(const ArrayFacts& a, const char* name, const ArraySpec& spec) {
  if (a.dtype != spec.dtype) fail_type(name, dtype_name(spec.dtype), dtype_name(a.dtype));
  // DLPack producers may report negative extents and nanobind passes them on; a caller that takes its expected
  // shape from the tensor itself (load_prefix) would take one too.
  if (std::any_of(a.shape, a.shape + a.ndim, [](int64_t d) { return d < 0; }))
    fail_value(name, "non-negative extents", "shape " + dims_str(a.shape, a.ndim));

  const bool same_shape = a.ndim == spec.shape.size() &&
                          std::equal(spec.shape.begin(), spec.shape.end(), a.shape);
  if (!same_shape) {
    fail_value(name, "shape " + dims_str(spec.shape.data(), spec.shape.size()), dims_str(a.shape, a.ndim));
  }

  int64_t numel = 1;
  for (int64_t d : spec.shape) numel *= d;
  // An empty tensor (a cache holding no positions yet) has no layout and nothing to align.
  if (numel > 0) {
    if (!is_c_contiguous(a)) {
      fail_value(name, "a contiguous tensor (C order)",
                 "strides " + dims_str(a.strides, a.ndim) + " (in elements) for shape " + dims_str(a.shape, a.ndim));
    }
    const auto address = reinterpret_cast<std::uintptr_t>(a.data);
    if (address % spec.align != 0) {
      char got[96];
      std::snprintf(got, sizeof(got), "0x%" PRIxPTR " (%zu bytes past a boundary)", address,
                    static_cast<std::size_t>(address % spec.align));
      fail_value(name, "a data pointer aligned to " + std::to_string(spec.align) + " bytes", got);
    }
  }

  if (a.device_type != spec.device_type) {
    const std::string want = spec.device_type == nb::device::cuda::value ? "a CUDA tensor" : "a CPU array";
    fail_type(name, want, device_name(a.device_type));
  }
}

void raise_not_a_tensor(nb::handle obj, const char* name, bool writable) {
  const std::string type = nb::type_name(obj.type()).c_str();
  std::string hint;
  InArray read_only;
  if (writable && nb::try_cast(obj, read_only, /*convert=*/false)) {
    hint = " that is read-only (this argument is written to)";
  }
  const std::string want = writable ? "a writable tensor" : "a tensor";
  throw nb::type_error((std::string(name) + ": expected " + want +
                        " (any DLPack producer: torch, CuPy, JAX, NumPy), got " + type + hint)
                           .c_str());
}

}  // namespace clusterfusion::python
