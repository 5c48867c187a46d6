// Test-name suffixes for model names ("pythia-2.8b" -> "pythia_2_8b": gtest allows letters, digits and '_').
#pragma once
#include <cctype>
#include <string>

namespace cf_test {

inline std::string test_name(std::string name) {
  for (char& ch : name) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return name;
}

// INSTANTIATE_TEST_SUITE_P's name generator for suites parametrized by a model name.
struct ModelTestName {
  template <class Info>
  std::string operator()(const Info& info) const {
    return test_name(info.param);
  }
};

}  // namespace cf_test
