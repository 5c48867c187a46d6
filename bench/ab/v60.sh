#!/usr/bin/env bash
# v60 (bench/NOTES.md): what an attention step is made of. On branch clock-stamps-2 (main + the CF_CLOCK_STAMPS knob):
#   1. layer_timing built twice, the timeline in global-timer ns and in SM cycles (CF_CLOCK_STAMPS), two shapes,
#      with nvidia-smi sampling the SM clock every 100 ms beside it;
#   2. ncu (--clock-control none, full set with source counters) on the 4 split kernels of tinyllama's layer_timing:
#      SM frequency under the stream, executed instructions and stall reasons per SASS line.
#   bash bench/ab/v60.sh runs 1; bash bench/ab/v60.sh ncu runs 2 on a -lineinfo build (per source line too).
set -u
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 100 > $OUT/smi.csv 2>&1 &
smi=$!
if [ "${1:-}" != ncu ]; then
  V49_VARIANTS="ns: cyc:-DCF_CLOCK_STAMPS" V49_SHAPES="tinyllama-1.1b:512 pythia-2.8b:512" V49_ARGS=device bash bench/ab/v49.sh timing
  kill $smi
  exit
fi
# ncu: the first launches of layer_timing are the layers' planning launches (5 per layer for Llama, 13 layers of
# tinyllama rotated): skip them, profile the split graph's first layer (attend, o_proj, gate_up, down).
cmake -S . -B build-v-li -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_TESTS=OFF -DCLUSTERFUSION_BUILD_BENCH=ON \
  -DCLUSTERFUSION_BUILD_PYTHON=OFF -DCLUSTERFUSION_BUILD_EXAMPLES=OFF -DCMAKE_CUDA_FLAGS=-lineinfo > $OUT/build.txt 2>&1 &&
  cmake --build build-v-li --target layer_timing >> $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
# V60_NCU="--replay-mode application --cache-control none --section SourceCounters --section WarpStateStats" profiles as
# the kernels run in the step (each pass a fresh run of the program, no cache flushed), V60_SKIP=73 the third layer.
ncu --clock-control none ${V60_NCU:---set full} --import-source yes -k regex:decoder_layer_kernel \
  --launch-skip ${V60_SKIP:-65} --launch-count 4 -o /tmp/v60 -f build-v-li/layer_timing tinyllama-1.1b 512 1 device \
  > $OUT/ncu_run.txt 2>&1
kill $smi
tail -5 $OUT/ncu_run.txt
ncu -i /tmp/v60.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
ncu -i /tmp/v60.ncu-rep --page source --csv --print-source cuda > /tmp/ncu_cuda.csv 2>&1
ncu -i /tmp/v60.ncu-rep --page source --csv --print-source sass > /tmp/ncu_sass.csv 2>&1
tar czf $OUT/ncu_source.tgz -C /tmp ncu_cuda.csv ncu_sass.csv
grep -E "decoder_layer_kernel|SM Frequency|Duration|Executed Ipc A|Registers" $OUT/ncu_details.txt | head -60
ls -la $OUT
