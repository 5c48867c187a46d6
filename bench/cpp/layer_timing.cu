// Times the fused decoder layer of any supported model (split and cooperative) against a streaming-read kernel,
// in one process, for kernel work without Python: `layer_timing pythia-2.8b|llama-2-7b|... 512 [iters [device]]`
// (device: the layers read the position from device memory, as the step graph's do). Weights are rotated over enough
// layers that L2 (50 MB) cannot serve them; each layer is timed inside a CUDA graph of all rotated layers.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <vector>

#include <cuda_fp16.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/kernels/layer_params.hpp"
#include "clusterfusion/weight_schema.hpp"

namespace cf = clusterfusion;

namespace {

// Pseudo-random N(0, ~std)-ish values from a hash: weights must not be zeros (zeros can run faster).
__global__ void fill_random(__half* data, std::size_t n, uint32_t seed, float scale) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    data[i] = __float2half((float(h & 0xffff) / 65536.f - 0.5f) * 3.46f * scale);
  }
}

__global__ void read_sum(const uint4* data, std::size_t n, float* out) {
  float acc = 0.f;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    const uint4 v = data[i];
    acc += __uint_as_float(v.x ^ v.y ^ v.z ^ v.w);
  }
  if (acc == 1.2345f) *out = acc;  // keeps the loads alive without a reduction
}

struct DeviceHalf {
  __half* ptr = nullptr;
  std::vector<int64_t> shape;
  DeviceHalf(std::vector<int64_t> s, float scale, uint32_t seed) : shape(std::move(s)) {
    std::size_t n = 1;
    for (auto d : shape) n *= d;
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(__half)));
    fill_random<<<1024, 256>>>(ptr, n, seed, scale);
    CF_CHECK_LAUNCH("fill_random");
  }
  DeviceHalf(const DeviceHalf&) = delete;
  DeviceHalf(DeviceHalf&& o) noexcept : ptr(o.ptr), shape(std::move(o.shape)) { o.ptr = nullptr; }
  ~DeviceHalf() { cudaFree(ptr); }
  cf::TensorView view() const { return cf::TensorView(ptr, shape, cf::DType::Float16); }
};

// Every tensor of the architecture's weight schema, at realistic scales.
struct Layer {
  std::vector<DeviceHalf> t;
  cf::LayerWeights weights;
  Layer(const cf::ModelConfig& c, uint32_t seed) {
    const auto& specs = cf::weight_schema(c.arch).layer;
    t.reserve(specs.size());
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const std::string name = specs[i].name;
      const float scale = name == "ln1_weight" || name == "ln2_weight" ? 1.f : name.find("ln") == 0 ? .05f : .02f;
      t.emplace_back(cf::shape_of(specs[i], c), scale, seed * 16 + uint32_t(i));
      weights.views[static_cast<std::size_t>(specs[i].slot)] = t.back().view();
    }
  }
  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& d : t) {
      std::size_t n = 2;
      for (auto s : d.shape) n *= s;
      b += n;
    }
    return b;
  }
};

float time_graph_ms(cudaGraphExec_t exec, cudaStream_t stream, int iters) {
  cudaEvent_t a, b;
  CF_CUDA_CHECK(cudaEventCreate(&a));
  CF_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    CF_CUDA_CHECK(cudaEventRecord(a, stream));
    CF_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    CF_CUDA_CHECK(cudaEventRecord(b, stream));
    CF_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    CF_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CF_CUDA_CHECK(cudaEventDestroy(a));
  CF_CUDA_CHECK(cudaEventDestroy(b));
  return ms[ms.size() / 2];
}

// Pearson's r of two equally long series.
double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = double(x.size());
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    sx += x[i], sy += y[i], sxx += x[i] * x[i], syy += y[i] * y[i], sxy += x[i] * y[i];
  const double cov = sxy / n - sx * sy / n / n;
  return cov / std::sqrt((sxx / n - sx * sx / n / n) * (syy / n - sy * sy / n / n) + 1e-30);
}

constexpr int kMarks = cf::kernels::kTimelineMarks;
constexpr int kStride = cf::kernels::kTimelineStride;  // stamps per block: the marks, then any box stamps
// In the order of kernels::TimelineMark (decoder_layer.cuh).
const char* const kMarkNames[] = {"entry",  "listed", "primed",     "waited", "input",     "normed",
                                  "cluster ok", "qkv", "up",     "head ready", "rotary", "scores",
                                  "softmax", "values", "attention", "proj",   "end"};
static_assert(sizeof(kMarkNames) / sizeof(kMarkNames[0]) == kMarks, "one name per timeline mark");

// With -DCF_BOX_STAMPS=N: the weight stream of one layer from its boxes' stamps (each warp's first N boxes: issued,
// reached by the consumer, arrived). Per 1 µs bin from t0 over every kernel of the layer: TB/s issued and consumed,
// MB in flight (issued, not yet consumed) at the bin's end; per kernel: how long consumers waited for a box, and
// the issue -> arrival latency of the boxes they waited for (there, arrival = the wait's return).
void print_box_stream(const std::vector<unsigned long long>& t, int kernels, int blocks, unsigned long long t0,
                      const std::vector<std::string>& names) {
  constexpr int kBoxStamps = cf::kernels::kBoxStamps, kWarps = cf::kernels::kWarps;
  if constexpr (kBoxStamps == 0) return;
  const double box_mb = cf::kernels::kBoxBytes * 1e-6;
  const auto us = [t0](unsigned long long v) { return (double(v) - double(t0)) * 1e-3; };
  std::vector<double> issued, consumed;
  const auto add = [](std::vector<double>& bins, double at) {
    const int b = std::max(0, int(at));
    if (int(bins.size()) <= b) bins.resize(b + 1, 0.0);
    bins[b] += 1.0;
  };
  // Per SM: the rate at which its block consumed boxes, from its first box's arrival to its last (GB/s), per kernel,
  // and how alike two kernels' rates are on the same SM (Pearson r over the SMs both used): a high r means some SMs
  // stream slower than others whatever they run.
  constexpr int kSms = 256;
  std::vector<std::vector<double>> rate(kernels, std::vector<double>(kSms, -1.0));
  std::printf("    box stream (first %d boxes per warp)\n", kBoxStamps);
  for (int k = 0; k < kernels; ++k) {
    std::vector<double> waits, latencies, warp_wait_share;
    int truncated = 0;
    for (int b = 0; b < blocks; ++b) {
      const unsigned long long* block = t.data() + (std::size_t(k) * blocks + b) * kStride;
      double block_first = 1e30, block_last = -1e30;
      int block_boxes = 0;
      for (int w = 0; w < kWarps; ++w) {
        const unsigned long long* s =
            t.data() + (std::size_t(k) * blocks + b) * kStride + kMarks + std::size_t(w) * kBoxStamps * 3;
        double waited = 0, first = -1, last = 0;
        int n = 0;
        for (; n < kBoxStamps && s[n * 3] != 0; ++n) {
          add(issued, us(s[n * 3]));
          if (s[n * 3 + 2] == 0) continue;  // issued ahead, never consumed in this launch
          add(consumed, us(s[n * 3 + 2]));
          const double wait = us(s[n * 3 + 2]) - us(s[n * 3 + 1]);
          waits.push_back(wait);
          waited += wait;
          if (first < 0) first = us(s[n * 3 + 1]);
          last = us(s[n * 3 + 2]);
          if (wait > 0.2) latencies.push_back(us(s[n * 3 + 2]) - us(s[n * 3]));
          block_first = std::min(block_first, last);
          block_last = std::max(block_last, last);
          ++block_boxes;
        }
        truncated += n == kBoxStamps;
        if (last > first && first >= 0) warp_wait_share.push_back(waited / (last - first));
      }
      const unsigned long long sm = block[kStride - 1];
      if (block_boxes > 1 && block_last > block_first && sm < kSms)
        rate[k][sm] = (block_boxes - 1) * cf::kernels::kBoxBytes * 1e-3 / (block_last - block_first);
    }
    const auto pct = [](std::vector<double>& v, double q) {
      if (v.empty()) return 0.0;
      std::sort(v.begin(), v.end());
      return v[std::min(v.size() - 1, std::size_t(q * v.size()))];
    };
    std::printf("      %-22s boxes %6zu; consumer's wait per box median %.2f p90 %.2f us; warps waiting %.0f%% "
                "(median) of their first-to-last box; latency of waited boxes median %.2f p90 %.2f us%s\n",
                kernels > 1 ? names[k].c_str() : "all phases", waits.size(), pct(waits, 0.5), pct(waits, 0.9),
                100 * pct(warp_wait_share, 0.5), pct(latencies, 0.5), pct(latencies, 0.9),
                truncated ? " (some warps past the stamps)" : "");
  }
  for (int k = 0; k < kernels; ++k) {
    std::printf("      GB/s by SM, %s:", kernels > 1 ? names[k].c_str() : "all phases");
    for (int sm = 0; sm < kSms; ++sm)
      if (rate[k][sm] >= 0) std::printf(" %d:%.0f", sm, rate[k][sm]);
    std::printf("\n");
  }
  for (int a = 0; a < kernels; ++a)
    for (int c = a + 1; c < kernels; ++c) {
      double n = 0, sa = 0, sc = 0, saa = 0, scc = 0, sac = 0;
      for (int sm = 0; sm < kSms; ++sm) {
        if (rate[a][sm] < 0 || rate[c][sm] < 0) continue;
        n += 1, sa += rate[a][sm], sc += rate[c][sm], saa += rate[a][sm] * rate[a][sm];
        scc += rate[c][sm] * rate[c][sm], sac += rate[a][sm] * rate[c][sm];
      }
      const double r = (n * sac - sa * sc) / std::sqrt((n * saa - sa * sa) * (n * scc - sc * sc));
      std::printf("      per-SM rates, %s against %s: r = %.2f over %.0f SMs\n", names[a].c_str(), names[c].c_str(),
                  r, n);
    }
  const std::size_t bins = std::max(issued.size(), consumed.size());
  issued.resize(bins, 0.0);
  consumed.resize(bins, 0.0);
  std::printf("      %-9s", "us");
  for (std::size_t b = 0; b < bins; ++b) std::printf("%5zu", b);
  std::printf("\n      %-9s", "issued");
  for (std::size_t b = 0; b < bins; ++b) std::printf("%5.1f", issued[b] * box_mb);  // MB per us = TB/s
  std::printf("\n      %-9s", "consumed");
  for (std::size_t b = 0; b < bins; ++b) std::printf("%5.1f", consumed[b] * box_mb);
  std::printf("\n      %-9s", "inflight");
  double in_flight = 0;
  for (std::size_t b = 0; b < bins; ++b) std::printf("%5.1f", (in_flight += (issued[b] - consumed[b]) * box_mb));
  std::printf("  (MB)\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "pythia-2.8b";
  const int ctx = argc > 2 ? std::atoi(argv[2]) : 512;
  const int iters = argc > 3 ? std::atoi(argv[3]) : 30;
  // "device": the layers read the position from device memory, as DecodeContext's step graph does.
  const bool device_position = argc > 4 && std::string(argv[4]) == "device";
  cf::ModelConfig config = cf::model_config(model);
  // Rotate over >= 1.2 GB of weights so that each layer comes from HBM.
  const double layer_bytes = 2.0 * config.hidden * (2.0 * config.q_rows() + 2.0 * config.kv_rows() +
                                                    (config.parallel_residual ? 2.0 : 3.0) * config.ffn);
  const int rotate = std::max(4, int(1.2e9 / layer_bytes));
  config.layers = rotate;
  const int max_seq = std::max(ctx + 1, 2048);
  cudaStream_t stream;
  CF_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // Streaming-read bandwidth over 2 GiB.
  const std::size_t read_bytes = std::size_t(2) << 30;
  DeviceHalf big({int64_t(read_bytes / 2)}, 1.f, 7);
  float* sink;
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&sink), sizeof(float)));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CF_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  read_sum<<<132 * 8, 512, 0, stream>>>(reinterpret_cast<const uint4*>(big.ptr), read_bytes / 16, sink);
  CF_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CF_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  time_graph_ms(exec, stream, 3);
  const double read_bw = read_bytes / (time_graph_ms(exec, stream, 10) * 1e-3);
  std::printf("streaming read: %.3f TB/s\n", read_bw / 1e12);

  std::vector<Layer> layers;
  std::vector<cf::DecoderLayer*> fused;
  layers.reserve(rotate);
  for (int l = 0; l < rotate; ++l) layers.emplace_back(config, 1000 + l);
  for (int l = 0; l < rotate; ++l) fused.push_back(new cf::DecoderLayer(config, layers[l].weights, max_seq));
  cf::KVCache cache(config, max_seq);
  for (int l = 0; l < rotate; ++l) {
    fill_random<<<1024, 256>>>(cache.keys(l), cache.layer_elems(), 77 + l, 1.f);
    fill_random<<<1024, 256>>>(cache.values(l), cache.layer_elems(), 99 + l, 1.f);
  }
  DeviceHalf x({config.hidden}, 1.f, 5), out({config.hidden}, 1.f, 6), h1({config.hidden}, 1.f, 8);
  float *attn, *act;
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&attn), config.hidden * sizeof(float)));
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&act), config.ffn * sizeof(float)));
  CF_CUDA_CHECK(cudaDeviceSynchronize());
  const std::size_t bytes = layers[0].bytes() + std::size_t(2) * ctx * config.kv_rows() * 2;
  const cf::LayerLaunchPlan& plan = fused[0]->plan();
  std::printf("%s ctx %d: %d layers rotated, %.1f MB per layer, %d clusters of %d blocks for %d heads\n",
              model.c_str(), ctx, rotate, bytes / 1e6, plan.clusters, plan.cluster_size, config.heads);
  const auto set_overlap = [&](bool on) {
    for (auto* f : fused) f->set_overlap_previous_kernel(on);
  };
  int* position;
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&position), sizeof(int)));
  CF_CUDA_CHECK(cudaMemcpy(position, &ctx, sizeof(int), cudaMemcpyHostToDevice));
  const auto forward = [&](int l, const cf::LayerIO& io, cf::LayerMode mode) {
    cache.set_length(ctx);
    if (device_position) fused[l]->forward_at_device_position(cache, l, io, position, mode, stream);
    else fused[l]->forward(cache, l, io, ctx, mode, stream);
  };
  if (device_position) std::printf("  (the layers read the position from device memory)\n");
  for (const cf::LayerMode mode : {cf::LayerMode::Split, cf::LayerMode::Cooperative}) {
    if (mode == cf::LayerMode::Cooperative && !plan.cooperative_supported) {
      std::printf("  %-12s not supported: the grid does not fit on the device at once\n", cf::layer_mode_name(mode));
      continue;
    }
    for (const bool overlap : {false, true}) {
      set_overlap(overlap);
      CF_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      for (int l = 0; l < rotate; ++l) forward(l, cf::LayerIO{x.ptr, out.ptr, h1.ptr, attn, act}, mode);
      CF_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
      CF_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      time_graph_ms(exec, stream, 3);
      const double us = time_graph_ms(exec, stream, iters) * 1e3 / rotate;
      std::printf("  %-12s %-10s %8.2f us/layer  %6.1f%% of streaming read\n", cf::layer_mode_name(mode),
                  overlap ? "overlapped" : "", us, 100.0 * bytes / (us * 1e-6) / read_bw);
      CF_CUDA_CHECK(cudaGraphExecDestroy(exec));
      CF_CUDA_CHECK(cudaGraphDestroy(graph));
    }
  }
  // Where the time goes inside one layer that overlaps the one before it, in each mode: per-block global-timer
  // stamps at each stage, from the first block's entry (the previous layer is still running then).
  set_overlap(true);
  for (const cf::LayerMode mode : {cf::LayerMode::Split, cf::LayerMode::Cooperative}) {
    if (mode == cf::LayerMode::Cooperative && !plan.cooperative_supported) continue;
    const std::vector<std::string> phases = fused[0]->phase_names();
    const int kernels = mode == cf::LayerMode::Split ? int(phases.size()) : 1;
    unsigned long long* timeline;
    const std::size_t stamps = std::size_t(kernels) * plan.blocks * kStride;
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&timeline), stamps * sizeof(unsigned long long)));
    CF_CUDA_CHECK(cudaMemset(timeline, 0, stamps * sizeof(unsigned long long)));
    for (int l = 0; l < rotate; ++l)
      forward(l, cf::LayerIO{x.ptr, out.ptr, h1.ptr, attn, act, l == rotate - 1 ? timeline : nullptr}, mode);
    CF_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<unsigned long long> t(stamps);
    CF_CUDA_CHECK(cudaMemcpy(t.data(), timeline, stamps * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
    CF_CUDA_CHECK(cudaFree(timeline));
    unsigned long long t0 = ~0ull;
    for (int b = 0; b < plan.blocks; ++b)
      if (t[b * kStride] != 0) t0 = std::min(t0, t[b * kStride]);  // a phase launch may have fewer blocks
    std::printf("  %s timeline (overlapped), us since the first block entered: min / median / max over the blocks\n"
                "  of head clusters | of the other clusters\n", cf::layer_mode_name(mode));
    for (int k = 0; k < kernels; ++k) {
      if (kernels > 1)
        std::printf("    %s kernel, %d clusters of %d, %zu B of shared memory per block\n", phases[k].c_str(),
                    plan.phase_grids[k].blocks / plan.phase_grids[k].cluster_size, plan.phase_grids[k].cluster_size,
                    plan.phase_grids[k].smem);
      const int ranks = kernels > 1 ? plan.phase_grids[k].cluster_size : plan.cluster_size;
      const int head_blocks = config.heads * ranks;
      const unsigned long long* tk = t.data() + std::size_t(k) * plan.blocks * kStride;
      for (int m = 0; m < kMarks; ++m) {
        bool reached = false;
        for (int b = 0; b < plan.blocks; ++b) reached |= tk[b * kStride + m] != 0;
        if (!reached) continue;  // a stage this kernel does not run
        std::printf("    %-11s", kMarkNames[m]);
        for (const auto [b0, b1] : {std::pair{0, head_blocks}, std::pair{head_blocks, plan.blocks}}) {
          std::vector<double> v;
          for (int b = b0; b < b1; ++b)
            if (tk[b * kStride + m] != 0) v.push_back((double(tk[b * kStride + m]) - double(t0)) * 1e-3);
          std::sort(v.begin(), v.end());
          if (v.empty()) std::printf(" | %23s", "-");
          else std::printf(" | %7.2f %7.2f %7.2f", v.front(), v[v.size() / 2], v.back());
        }
        std::printf("\n");
      }
      // Entry and end by block index (v49: an overlapped launch's later blocks take the SMs freed last): the mean
      // over each quarter of the blocks, in index order.
      for (const int m : {0, kMarks - 1}) {
        std::printf("    %-5s by index quarter", kMarkNames[m]);
        for (const auto [b0, b1] : {std::pair{0, plan.blocks}, std::pair{head_blocks, plan.blocks}}) {
          std::printf(" |");
          for (int q = 0; q < 4; ++q) {
            double sum = 0;
            int n = 0;
            for (int b = b0 + (b1 - b0) * q / 4; b < b0 + (b1 - b0) * (q + 1) / 4; ++b)
              if (tk[b * kStride + m] != 0) sum += (double(tk[b * kStride + m]) - double(t0)) * 1e-3, ++n;
            if (n > 0) std::printf(" %7.2f", sum / n);
            else std::printf(" %7s", "-");
          }
        }
        std::printf("  (all | other clusters)\n");
      }
      const int launch_blocks = kernels > 1 ? plan.phase_grids[k].blocks : plan.blocks;
      const auto us = [&](int b, int m) { return (double(tk[b * kStride + m]) - double(t0)) * 1e-3; };
      // What balancing inside each cluster without a head could take off the launch's end (bench/NOTES.md v79): if its
      // blocks shared their remaining rows, they would end near the mean of their ends.
      if (ranks > 1 && kernels > 1) {
        double block_end = 0, pair_end = 0, head_end = 0;
        std::vector<double> rank0, rank1;
        for (int b = 0; b < std::min(head_blocks, launch_blocks); ++b)
          if (tk[b * kStride + kMarks - 1] != 0) head_end = std::max(head_end, us(b, kMarks - 1));
        for (int c = head_blocks / ranks; c < launch_blocks / ranks; ++c) {
          double mean = 0;
          for (int r = 0; r < ranks; ++r) {
            block_end = std::max(block_end, us(c * ranks + r, kMarks - 1));
            mean += us(c * ranks + r, kMarks - 1) / ranks;
          }
          pair_end = std::max(pair_end, mean);
          rank0.push_back(us(c * ranks, kMarks - 1));
          rank1.push_back(us(c * ranks + 1, kMarks - 1));
        }
        if (rank0.size() > 1)
          std::printf("    clusters without a head: %d; r(rank 0, rank 1) of their ends %.2f; last end %.2f, with each "
                      "cluster's ranks ending at their mean %.2f (head clusters' last %.2f)\n",
                      int(rank0.size()), pearson(rank0, rank1), block_end, pair_end, head_end);
      }
      // The norm's latency, input loads issued to normed (bench/NOTES.md v80): its spread over the blocks, and how much
      // of a block's lateness at the end it explains (r between the two over the blocks).
      {
        const auto mark = [](const char* name) {
          return int(std::find_if(std::begin(kMarkNames), std::end(kMarkNames),
                                  [&](const char* m) { return std::string(m) == name; }) - std::begin(kMarkNames));
        };
        const int input = mark("input"), normed = mark("normed");
        std::vector<double> norm, end;
        for (int b = 0; b < launch_blocks; ++b) {
          if (tk[b * kStride + input] != 0 && tk[b * kStride + normed] != 0 && tk[b * kStride + kMarks - 1] != 0) {
            norm.push_back(us(b, normed) - us(b, input));
            end.push_back(us(b, kMarks - 1));
          }
        }
        if (norm.size() > 1) {
          std::vector<double> sorted = norm;
          std::sort(sorted.begin(), sorted.end());
          std::printf("    input to normed: min %.2f median %.2f p90 %.2f max %.2f us; r with the block's end %.2f\n",
                      sorted.front(), sorted[sorted.size() / 2], sorted[sorted.size() * 9 / 10], sorted.back(),
                      pearson(norm, end));
        }
      }
      // With CF_TIMELINE_BLOCKS set: every block's marks (bench/NOTES.md v80), one line each.
      if (std::getenv("CF_TIMELINE_BLOCKS") != nullptr) {
        for (int b = 0; b < launch_blocks; ++b) {
          std::printf("      block %3d:", b);
          for (int m = 0; m < kMarks; ++m)
            if (tk[b * kStride + m] != 0) std::printf(" %s %.2f,", kMarkNames[m], us(b, m));
          std::printf("\n");
        }
      }
      // The block that ends last, beside the other blocks of its cluster: every stage it reached.
      int last = 0;
      for (int b = 0; b < plan.blocks; ++b)
        if (tk[b * kStride + kMarks - 1] > tk[last * kStride + kMarks - 1]) last = b;
      const int first_of_cluster = last / ranks * ranks;
      for (int b = first_of_cluster; b < first_of_cluster + ranks; ++b) {
        std::printf("    block %3d%s:", b, b == last ? " (ends last)" : "            ");
        for (int m = 0; m < kMarks; ++m)
          if (tk[b * kStride + m] != 0)
            std::printf(" %s %.2f,", kMarkNames[m], (double(tk[b * kStride + m]) - double(t0)) * 1e-3);
        std::printf("\n");
      }
    }
    print_box_stream(t, kernels, plan.blocks, t0, phases);
  }
  for (auto* f : fused) delete f;
  CF_CUDA_CHECK(cudaFree(position));
  return 0;
}
