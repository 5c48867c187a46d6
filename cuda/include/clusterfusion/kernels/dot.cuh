// The inner product every weight-streaming kernel is made of: 8 float16 weights (one 16-byte load) times 8
// floats, multiplied and added in float (FMA), in element order so results are reproducible.
#pragma once
#include <cstdint>

#include <cuda_fp16.h>

namespace clusterfusion::kernels {

// acc + the dot product of 8 float16 weights with 8 floats of y, in element order.
__device__ __forceinline__ float dot8(const uint4& w, const float* y, float acc) {
  const __half2* h = reinterpret_cast<const __half2*>(&w);
  const float4 y0 = *reinterpret_cast<const float4*>(y);
  const float4 y1 = *reinterpret_cast<const float4*>(y + 4);
  const float2 a = __half22float2(h[0]), b = __half22float2(h[1]), c = __half22float2(h[2]),
               d = __half22float2(h[3]);
  acc = fmaf(a.x, y0.x, acc);
  acc = fmaf(a.y, y0.y, acc);
  acc = fmaf(b.x, y0.z, acc);
  acc = fmaf(b.y, y0.w, acc);
  acc = fmaf(c.x, y1.x, acc);
  acc = fmaf(c.y, y1.y, acc);
  acc = fmaf(d.x, y1.z, acc);
  return fmaf(d.y, y1.w, acc);
}

}  // namespace clusterfusion::kernels
