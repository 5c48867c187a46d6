// plan_layer refuses shapes the kernels cannot run by the field, before it looks for a device.
#include <string>

#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

cf::ModelConfig llama_of_head_dim(int head_dim) {
  cf::ModelConfig c = cf::model_config("tinyllama-1.1b");
  c.heads = 16 * cf_test::uniform_int(1, 4);  // hidden = heads * head_dim stays a multiple of 256
  c.kv_heads = c.heads / 4;
  c.head_dim = head_dim;
  c.hidden = c.heads * head_dim;
  c.rotary_dims = head_dim;
  return c;
}

}  // namespace

// Llama applies W_o per head in column slices of head_dim: a slice must tile the 256-column box row.
TEST(PlanLayer, LlamaHeadDimMustDivideTheBoxRow) {
  const int head_dim = cf_test::uniform_int(0, 1) == 0 ? 80 : 96;
  const std::string msg =
      cf_test::thrown_message<std::invalid_argument>([&] { cf::plan_layer(llama_of_head_dim(head_dim), 512); });
  EXPECT_EQ(msg, "ModelConfig.head_dim: must divide 256 for this architecture's per-head W_o (got " +
                     std::to_string(head_dim) + ")");
}
