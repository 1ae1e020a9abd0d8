#!/usr/bin/env bash
# One GPU call: accuracy experiments in parallel, then float32 vs mixed_float16 throughput.
# Usage: experiments/gpu_screen.sh DATA OUT SECONDS NAME...
#   DATA: the real set's class folders (or a store whose preprocessing every NAME shares).
#   The stores the NAMEs need are ingested first, once; then each NAME of
#   experiments/accuracy_experiments.py runs as its own process under KERAS_BACKEND=jax and is
#   stopped after SECONDS. Each NAME runs the precision its row pins (float32 for the recorded
#   rows; 'reference' keeps auto: mixed_float16 on the GPU). Finished CVs are appended to
#   OUT/screen.jsonl (not to experiments/ACCURACY.jsonl: a screen is not a row yet), run folders
#   go to OUT/runs, and logs plus every run's experiment.json/metrics.json to OUT/logs.tgz.
#   The throughput benchmark bench/gpu_precision.py runs last, alone on the GPU.
set -u
data=$1 out=$2 limit=$3
shift 3
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false NUMBA_NUM_THREADS=2
export PYTHONUNBUFFERED=1 MRISCAN_CACHE=/tmp/mriscan_screen_cache
py=${PYTHON:-python3}
logs=$out/logs
mkdir -p "$out" "$logs"
nvidia-smi --query-gpu=name,memory.total --format=csv >"$logs/gpu.txt" 2>&1
args=(--data "$data" --out "$out/runs" --log "$out/screen.jsonl")
# ingest before the parallel runs, so that no two processes write the same store
"$py" experiments/accuracy_experiments.py "${args[@]}" --ingest-only "$@" >"$logs/ingest.log" 2>&1 || {
    cat "$logs/ingest.log"
    exit 1
}
for name in "$@"; do
    timeout "$limit" "$py" experiments/accuracy_experiments.py "${args[@]}" "$name" \
        >"$logs/$name.log" 2>&1 &
done
wait
# throughput alone on the GPU, after the screen
timeout 100 "$py" bench/gpu_precision.py >"$out/precision.jsonl" 2>"$logs/precision.err"
(cd "$out" && find runs -maxdepth 3 \( -name experiment.json -o -name metrics.json \) \
    -not -path 'runs/stores/*' >"logs/files.txt")
tar czf "$out/logs.tgz" -C "$out" logs -T "$logs/files.txt" 2>/dev/null
cat "$out/precision.jsonl" "$out/screen.jsonl" 2>/dev/null
