// One block's argmax result, as the LM head leaves it for token selection. Plain C++: host code sizes the
// buffer, device code fills it.
#pragma once

namespace clusterfusion::kernels {

struct ArgmaxPartial {
  float value;
  int index;
};

}  // namespace clusterfusion::kernels
