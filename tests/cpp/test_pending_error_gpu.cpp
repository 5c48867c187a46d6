// A CUDA error that other code left pending (here: a failed cudaSetDevice, a non-sticky error) is not the
// library's: its calls that succeed neither report it nor clear it, so its owner still finds it.
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "clusterfusion/decode_context.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"
#include "random_model.hpp"

namespace cf = clusterfusion;

namespace {

cudaError_t leave_an_error_pending() {
  cudaGetLastError();
  return cudaSetDevice(-1);
}

}  // namespace

TEST(PendingErrorGpu, StepsAndResetsLeaveAnUnrelatedErrorPending) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const cf_test::RandomModel model(config, cf_test::rng());
  cf::DecodeContext ctx(config, model.weights, 32);
  const int token = cf_test::uniform_int(0, config.vocab - 1);
  const int first = ctx.step(token);  // captures the step's graph

  const cudaError_t pending = leave_an_error_pending();
  ASSERT_NE(pending, cudaSuccess);
  EXPECT_NO_THROW(ctx.step());                 // a graph launch
  EXPECT_NO_THROW(ctx.reset());                // a kernel that stores the position
  EXPECT_EQ(ctx.step(token), first);           // a kernel that stores the token, then the graph
  EXPECT_NO_THROW(ctx.tokens(0, 2));
  EXPECT_EQ(cudaGetLastError(), pending);
}

TEST(PendingErrorGpu, CaptureLeavesAnUnrelatedErrorPending) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const cf_test::RandomModel model(config, cf_test::rng());
  cf::DecodeContext ctx(config, model.weights, 32);
  const cudaError_t pending = leave_an_error_pending();
  ASSERT_NE(pending, cudaSuccess);
  // The first step captures every launch of the step: embedding, each layer's phases, LM head, selection.
  EXPECT_NO_THROW(ctx.step(cf_test::uniform_int(0, config.vocab - 1)));
  EXPECT_EQ(cudaGetLastError(), pending);
}
