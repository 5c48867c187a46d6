// Field-by-field equality of two ModelConfigs for the tests, each field its own expectation.
#pragma once
#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"

namespace cf_test {

inline void expect_same_config(const clusterfusion::ModelConfig& a, const clusterfusion::ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.heads, b.heads);
  EXPECT_EQ(a.kv_heads, b.kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.ffn, b.ffn);
  EXPECT_EQ(a.layers, b.layers);
  EXPECT_EQ(a.vocab, b.vocab);
  EXPECT_EQ(a.rotary_dims, b.rotary_dims);
  EXPECT_EQ(a.rotary_base, b.rotary_base);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_positions, b.rope_scaling.original_max_positions);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.parallel_residual, b.parallel_residual);
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.tied_embeddings, b.tied_embeddings);
}

}  // namespace cf_test
