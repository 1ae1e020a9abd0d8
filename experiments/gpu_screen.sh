#!/usr/bin/env bash
# One GPU call: accuracy configurations in parallel, then float32 vs mixed_float16 throughput.
# Usage: bench/gpu_screen.sh STORES OUT SECONDS NAME...
#   STORES holds real<size>.zarr stores of the real set (`mriscan ingest --image-size N`);
#   each NAME of bench/accuracy_experiments.py runs as its own process under KERAS_BACKEND=jax
#   (precision auto: mixed_float16 on the GPU) and is stopped after SECONDS; finished CVs are
#   appended to OUT/screen.jsonl, per-fold metrics and logs of all go to OUT/logs.tgz.
set -u
stores=$1 out=$2 limit=$3
shift 3
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false NUMBA_NUM_THREADS=2
export PYTHONUNBUFFERED=1 MRISCAN_CACHE=/tmp/mriscan_screen_cache
py=${PYTHON:-python3}
logs=/tmp/mriscan_screen_logs
mkdir -p "$out" "$logs"
nvidia-smi --query-gpu=name,memory.total --format=csv >"$logs/gpu.txt" 2>&1
for name in "$@"; do
    size=128
    [[ $name == s160 ]] && size=160
    timeout "$limit" "$py" bench/accuracy_experiments.py "$stores/real$size.zarr" \
        "$out/screen.jsonl" "$name" >"$logs/$name.log" 2>&1 &
done
wait
# throughput alone on the GPU, after the screen
timeout 100 "$py" bench/gpu_precision.py >"$out/precision.jsonl" 2>"$logs/precision.err"
find /tmp -maxdepth 4 -path '/tmp/acc_*' -name '*.json' >"$logs/files.txt"
tar czf "$out/logs.tgz" -C / "${logs#/}" -T "$logs/files.txt" 2>/dev/null
cat "$out/precision.jsonl" "$out/screen.jsonl" 2>/dev/null
