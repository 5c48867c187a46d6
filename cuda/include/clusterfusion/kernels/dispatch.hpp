// Compile-time head_dim dispatch: one switch, one place that lists the supported head dimensions.
#pragma once
#include <stdexcept>
#include <string>

// Runs __VA_ARGS__ with `constexpr int HEAD_DIM` bound to head_dim, or throws naming the field.
#define CF_DISPATCH_HEAD_DIM(head_dim, HEAD_DIM, ...)                                                \
  [&] {                                                                                              \
    switch (head_dim) {                                                                              \
      case 64: { constexpr int HEAD_DIM = 64; return __VA_ARGS__(); }                                \
      case 80: { constexpr int HEAD_DIM = 80; return __VA_ARGS__(); }                                \
      case 96: { constexpr int HEAD_DIM = 96; return __VA_ARGS__(); }                                \
      case 128: { constexpr int HEAD_DIM = 128; return __VA_ARGS__(); }                              \
      case 256: { constexpr int HEAD_DIM = 256; return __VA_ARGS__(); }                              \
      default:                                                                                       \
        throw std::invalid_argument("ModelConfig.head_dim: " + std::to_string(head_dim) +            \
                                    " is not supported by the fused kernels (64, 80, 96, 128, 256)"); \
    }                                                                                                \
  }()
