#!/usr/bin/env bash
# v60 (bench/NOTES.md): what an attention step is made of. On branch clock-stamps-2 (main + the CF_CLOCK_STAMPS knob):
#   1. layer_timing built twice, the timeline in global-timer ns and in SM cycles (CF_CLOCK_STAMPS), two shapes,
#      with nvidia-smi sampling the SM clock every 100 ms beside it;
#   2. ncu (--clock-control none, full set with source counters) on 8 split kernels of tinyllama's layer_timing:
#      SM frequency under the stream, executed instructions and stall reasons per SASS line.
set -u
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 100 > $OUT/smi.csv 2>&1 &
smi=$!
V49_VARIANTS="ns: cyc:-DCF_CLOCK_STAMPS" V49_SHAPES="tinyllama-1.1b:512 pythia-2.8b:512" V49_ARGS=device bash bench/ab/v49.sh timing
kill $smi
ncu --clock-control none --set full --import-source no -k regex:decoder_layer_kernel --launch-skip ${V60_SKIP:-56} \
  --launch-count 8 -o /tmp/v60 -f build-v-ns/layer_timing tinyllama-1.1b 512 1 device > $OUT/ncu_run.txt 2>&1
tail -5 $OUT/ncu_run.txt
ncu -i /tmp/v60.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
ncu -i /tmp/v60.ncu-rep --page source --csv --print-source sass > /tmp/ncu_source.csv 2>&1
gzip -c /tmp/ncu_source.csv > $OUT/ncu_source.csv.gz
grep -E "decoder_layer_kernel|SM Frequency|Duration|Executed Ipc A|Registers" $OUT/ncu_details.txt | head -60
ls -la $OUT
