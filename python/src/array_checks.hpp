// Turning Python tensor arguments (any DLPack producer: torch, CuPy, JAX, NumPy) into checked nb::ndarrays.
// Every check raises before the C++ library sees the pointer, with a message that names the argument.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

namespace clusterfusion::python {

namespace nb = nanobind;

using InArray = nb::ndarray<nb::ro>;  // read-only is enough for inputs, and lets immutable JAX arrays in
using OutArray = nb::ndarray<>;

constexpr nb::dlpack::dtype kFloat16{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
constexpr nb::dlpack::dtype kFloat32{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 32, 1};
constexpr nb::dlpack::dtype kFloat64{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 64, 1};

// What one tensor argument must be.
struct ArraySpec {
  int device_type;            // nb::device::cuda::value or nb::device::cpu::value
  nb::dlpack::dtype dtype;
  std::vector<int64_t> shape;
  std::size_t align;          // bytes; 16 is what TMA and the float4 loads need
};

// The fields of a tensor that the checks read, whatever its ndarray flavour.
struct ArrayFacts {
  int device_type;
  nb::dlpack::dtype dtype;
  std::size_t ndim;
  const int64_t* shape;
  const int64_t* strides;  // in elements
  const void* data;
};

// Raises TypeError (dtype, device type) or ValueError (a negative extent, shape, layout, alignment) naming `name`
// unless `facts` meets `spec`. The device type is checked last so that every other check can be exercised on a
// machine without a GPU; the device id is the C++ library's to check (check_same_device, check_tensor_device)
// against the device of the object the tensor is given to.
void check_array(const ArrayFacts& facts, const char* name, const ArraySpec& spec);

// Raises TypeError naming `name`: `obj` could not be read as a tensor (or, for an output, as a writable one).
[[noreturn]] void raise_not_a_tensor(nb::handle obj, const char* name, bool writable);

// `obj` as a checked ndarray; the ndarray holds a reference to `obj`, so it keeps the tensor alive.
template <typename Array>
Array to_checked_array(nb::handle obj, const char* name, const ArraySpec& spec) {
  Array array;
  if (!nb::try_cast(obj, array, /*convert=*/false)) raise_not_a_tensor(obj, name, !Array::ReadOnly);
  check_array({array.device_type(), array.dtype(), array.ndim(), array.shape_ptr(), array.stride_ptr(),
               array.data()},
              name, spec);
  return array;
}

}  // namespace clusterfusion::python
