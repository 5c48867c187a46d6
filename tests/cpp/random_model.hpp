// A whole model with random weights on the GPU, for the tests of DecodeContext.
#pragma once
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "clusterfusion/config.hpp"
#include "clusterfusion/weight_schema.hpp"
#include "clusterfusion/weights.hpp"
#include "device_tensors.hpp"

namespace cf_test {

// Random weights at realistic scales (random_tensor), every tensor of the architecture's schema; the LM head is the
// embedding when the config ties them.
struct RandomModel {
  cf::ModelConfig config;
  std::vector<std::unique_ptr<RandomLayer>> layers;
  std::map<std::string, std::unique_ptr<HalfTensor>> tensors;
  cf::ModelWeights weights;

  RandomModel(const cf::ModelConfig& c, std::mt19937_64& rng) : config(c) {
    for (const cf::TensorSpec& spec : cf::weight_schema(c.arch).model) {
      if (spec.slot == int(cf::ModelSlot::lm_head) && c.tied_embeddings) continue;
      auto& t = tensors[spec.name] = random_tensor(spec, c, rng);
      weights.views[static_cast<std::size_t>(spec.slot)] = t->view();
    }
    if (c.tied_embeddings) weights[cf::ModelSlot::lm_head] = weights[cf::ModelSlot::embed_in];
    for (int l = 0; l < c.layers; ++l) {
      layers.push_back(std::make_unique<RandomLayer>(c, rng));
      weights.layers.push_back(layers.back()->views());
    }
  }
  const std::vector<double>& host(const char* name) const { return tensors.at(name)->host; }
};

// A model's layer shapes, two layers, a vocab that no block or warp count divides.
inline cf::ModelConfig small_model_config(const char* name = "pythia-70m") {
  cf::ModelConfig c = cf::model_config(name);
  c.layers = 2;
  c.vocab = 5003;
  return c;
}

}  // namespace cf_test
