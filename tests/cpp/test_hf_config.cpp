// cf_generate's config.json reader (examples/hf_config.hpp): the configs of real checkpoints give the library's
// model shapes, and every number is checked before it is converted, the refusal naming the field.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "../../examples/hf_config.hpp"
#include "config_expect.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;
namespace fs = std::filesystem;

namespace {

// transformers' configs of pythia-70m and Llama 3.2 1B (the fields read here).
const char* kPythia = R"({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_act": "gelu",
  "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 2048, "num_hidden_layers": 6,
  "vocab_size": 50304, "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-05,
  "use_parallel_residual": true, "torch_dtype": "float16"})";
const char* kLlama = R"({"model_type": "llama", "hidden_act": "silu", "hidden_size": 2048,
  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192,
  "num_hidden_layers": 16, "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false})";

cf::ModelConfig from_text(const std::string& text) {
  return cf_example::model_config_from_json(cf::parse_json(text), "config.json");
}

// `base` with the value of its first member named `key` (at any depth) replaced by `value`.
std::string with(std::string base, const std::string& key, const std::string& value) {
  const std::size_t at = base.find("\"" + key + "\": ");
  EXPECT_NE(at, std::string::npos) << key;
  const std::size_t start = at + key.size() + 4;
  const std::size_t end = base.find_first_of(",}", start);
  return base.replace(start, end - start, value);
}

std::string refusal(const std::string& text) {
  return cf_test::thrown_message<std::invalid_argument>([&] { from_text(text); });
}

}  // namespace

TEST(HfConfig, RealConfigsGiveTheLibraryShapes) {
  cf_test::expect_same_config(from_text(kPythia), cf::model_config("pythia-70m"));
  cf_test::expect_same_config(from_text(kLlama), cf::model_config("llama-3.2-1b"));
  // transformers 5 keeps the rotary settings in rope_parameters; head_dim may be null (hidden / heads).
  std::string v5 = with(kLlama, "head_dim", "null");
  v5.replace(v5.find("\"rope_scaling\""), 14, "\"rope_parameters\"");
  cf_test::expect_same_config(from_text(v5), cf::model_config("llama-3.2-1b"));
}

TEST(HfConfig, SizesMustBePositiveIntsNamingTheField) {
  // num_attention_heads 0 was a division by zero in waiting; 1e300 and 2.5 were converted to int (undefined for
  // 1e300, 2 for 2.5); errors named ModelConfig's fields, not the file's.
  for (const char* key : {"hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vocab_size"}) {
    for (const char* value : {"0", "-1", "2.5", "1e300", "2147483648", "-2147483648"}) {
      const std::string msg = refusal(with(kPythia, key, value));
      const std::string shown = std::string(value) == "1e300" ? "1e+300" : value;
      EXPECT_NE(msg.find(std::string("config.json: ") + key + ": expected an integer in [1, 2147483647], got " + shown),
                std::string::npos)
          << key << " " << value << ": " << msg;
    }
  }
  for (const char* key : {"num_key_value_heads", "head_dim", "original_max_position_embeddings"}) {
    const std::string msg = refusal(with(kLlama, key, "0"));
    EXPECT_NE(msg.find(std::string(key) + ": expected an integer in [1, 2147483647], got 0"), std::string::npos) << msg;
  }
  EXPECT_NE(refusal(with(kPythia, "num_attention_heads", "\"8\"")).find("num_attention_heads: expected a number"),
            std::string::npos);
  EXPECT_NE(refusal(with(kPythia, "num_attention_heads", "null")).find("no number for num_attention_heads"),
            std::string::npos);
  EXPECT_NE(refusal(with(kPythia, "num_attention_heads", "7"))
                .find("hidden_size 512 is not a multiple of num_attention_heads 7"),
            std::string::npos);
  // Integral values written as reals are integers.
  EXPECT_EQ(from_text(with(kPythia, "num_attention_heads", "8.0")).heads, 8);
}

TEST(HfConfig, RealsMustBeFiniteFloatsNamingTheField) {
  for (const char* value : {"0", "-1", "1e300", "1e-50"}) {
    std::string msg = refusal(with(kPythia, "layer_norm_eps", value));
    EXPECT_NE(msg.find("config.json: layer_norm_eps: expected a positive number within the range of a float"),
              std::string::npos)
        << value << ": " << msg;
    msg = refusal(with(kLlama, "rope_theta", value));
    EXPECT_NE(msg.find("rope_theta: expected a positive number within the range of a float"), std::string::npos) << msg;
    msg = refusal(with(kLlama, "factor", value));
    EXPECT_NE(msg.find("factor: expected a positive number within the range of a float"), std::string::npos) << msg;
  }
  for (const char* value : {"0", "-0.5", "1.5", "1e300"}) {
    const std::string msg = refusal(with(kPythia, "rotary_pct", value));
    EXPECT_NE(msg.find("rotary_pct: expected a fraction in (0, 1]"), std::string::npos) << value << ": " << msg;
  }
  // JSON itself has no infinities: 1e400 is refused by the parser.
  EXPECT_THROW(cf::parse_json(with(kPythia, "layer_norm_eps", "1e400")), std::invalid_argument);
}

TEST(HfConfig, ReadConfigNamesTheFileAndWaitsForNothing) {
  const fs::path dir = fs::temp_directory_path() / ("cf_hf_config_" + std::to_string(::getpid()) + "_" +
                                                    std::to_string(cf_test::uniform_int(0, 1 << 30)));
  fs::create_directories(dir);
  const std::string path = (dir / "config.json").string();
  EXPECT_NE(cf_test::thrown_message<std::runtime_error>([&] { cf_example::read_config(dir.string()); })
                .find(path + ": cannot open"),
            std::string::npos);
  std::ofstream(path) << with(kPythia, "num_attention_heads", "0");
  EXPECT_NE(cf_test::thrown_message<std::invalid_argument>([&] { cf_example::read_config(dir.string()); })
                .find(path + ": num_attention_heads: expected an integer"),
            std::string::npos);
  std::ofstream(path, std::ios::trunc) << "{\"a\": 01}";
  EXPECT_NE(cf_test::thrown_message<std::invalid_argument>([&] { cf_example::read_config(dir.string()); })
                .find(path + ": JSON: malformed number at byte 6"),
            std::string::npos);
  std::ofstream(path, std::ios::trunc) << kPythia;
  cf_test::expect_same_config(cf_example::read_config(dir.string()), cf::model_config("pythia-70m"));
  // A FIFO in place of the file: refused, not waited on.
  fs::remove(path);
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  const int writer = open(path.c_str(), O_RDWR | O_NONBLOCK);
  EXPECT_NE(cf_test::thrown_message<std::runtime_error>([&] { cf_example::read_config(dir.string()); })
                .find(path + ": not a regular file"),
            std::string::npos);
  close(writer);
  fs::remove_all(dir);
}
