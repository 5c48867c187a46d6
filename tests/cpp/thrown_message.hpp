// The message of the exception of type E that `fn` throws; a test failure if it throws nothing or another type.
#pragma once
#include <string>

#include <gtest/gtest.h>

namespace cf_test {

template <typename E, typename F>
std::string thrown_message(F&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a different exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "threw nothing";
  return {};
}

}  // namespace cf_test
