// Non-owning views of device tensors: pointer, shape, element type and, when known, the device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace clusterfusion {

enum class DType { Float16, BFloat16, Float32, Int32, Int64, Other };
const char* dtype_name(DType dtype);
std::size_t dtype_size(DType dtype);

struct TensorView {
  void* data = nullptr;
  std::vector<int64_t> shape;
  DType dtype = DType::Float16;
  // The CUDA device ordinal of data as its producer states it (DLPack does); -1: not stated, so the library asks
  // CUDA where the memory is (check_tensor_device, <clusterfusion/device_guard.hpp>).
  int device = -1;

  TensorView() = default;
  TensorView(void* d, std::vector<int64_t> s, DType t, int dev = -1)
      : data(d), shape(std::move(s)), dtype(t), device(dev) {}
  int64_t numel() const;
  std::string shape_str() const;
};

// Throws std::invalid_argument "<name>: expected ..., got ..." unless `view` has a non-null pointer, no negative
// extent, exactly `shape`, dtype `dtype` (float16 unless told) and the alignment `align` bytes (16: what TMA
// needs). The device is check_tensor_device's.
void check_tensor(const TensorView& view, const char* name, std::initializer_list<int64_t> shape,
                  DType dtype = DType::Float16, std::size_t align = 16);

}  // namespace clusterfusion
