// Uses the installed headers and library: a config from the public API, validated.
#include <cstdio>

#include <clusterfusion/config.hpp>

int main() {
  const clusterfusion::ModelConfig config = clusterfusion::pythia_config("pythia-2.8b");
  config.validate();
  std::printf("hidden %d\n", config.hidden);
  return 0;
}
