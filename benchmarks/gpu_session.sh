#!/usr/bin/env bash
# The GPU proofs in stages, run from the repository root on a GPU machine; figures go to $OUT (default
# benchmarks/results/gpu-run), scratch to $JB_WORK (default: joulebench-gpu in the temp folder; kept between
# stages). Missing pure-Python packages may come as wheels in .whl/ (installed under $JB_WORK/site). Stages:
#   tier      pytest -m gpu tests/gpu (one GPU): the study test alone first (stage `study`), then the meters
#   sweep     sweep efficiency (issue 3), load-group reuse; keeps .jbm1/part0 in $JB_WORK
#   repeat    real SmolLM2 weights prepared (GGUF pieces .jbm1/part0 or $JB_WORK/part0, and .jbm2/part1);
#             repeatability, paired meters on/off overhead, and synthetic vs real weights (issue 10)
#   sweep1    the one-worker-per-trial side of the sweep benchmark, merged with the reuse side of `sweep`
#   adaptive  adaptive repeats (max ${ADAPT_MAX:-25}) on eager batch ${ADAPT_BS:-16} until the J/token CI is 2 %
#   overhead  the paired meters-on/off overhead alone (${PAIRS:-24} pairs, batch 64, compiled decode)
#   quickstart  the CUDA quickstart through `joulebench run`
#   svr       synthetic vs real weights alone
#   multigpu  issue 8 on two GPUs, plus the two-GPU test of the GPU tier
set -u
stage=${1:?stage: tier | study | sweep | sweep1 | repeat | adaptive | overhead | quickstart | svr | multigpu}
OUT=${OUT:-benchmarks/results/gpu-run}
mkdir -p "$OUT"
JB_WORK=${JB_WORK:-$(dirname "$(mktemp -u)")/joulebench-gpu}
mkdir -p "$JB_WORK"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$JB_WORK/site" .whl/*.whl \
    || exit 1
  export PYTHONPATH=$PWD/src:$JB_WORK/site
else
  export PYTHONPATH=$PWD/src
fi
nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit,pstate,temperature.gpu,persistence_mode \
  --format=csv >"$OUT/nvidia-smi-$stage.csv" 2>&1
cat "$OUT/nvidia-smi-$stage.csv"
REAL=$JB_WORK/smollm2-real
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
part0() { for p in .jbm1/part0 "$JB_WORK/part0"; do [ -f "$p" ] && { echo "$p"; return; }; done; }
prepare_real() {
  local p0; p0=$(part0)
  if [ ! -d $REAL ] && [ -n "$p0" ] && [ -f .jbm2/part1 ]; then
    python3 benchmarks/prepare_real_weights.py --parts "$p0" .jbm2/part1 --sha256 $SHA --out $REAL 2>&1 | tail -2
  fi
}
case $stage in
tier|study)
  [ -f .jbm1/part0 ] && cp .jbm1/part0 "$JB_WORK/part0"
  OUT=$OUT bash benchmarks/gpu_tier.sh "$([ "$stage" = study ] && echo study)"
  ;;
sweep)
  [ -f .jbm1/part0 ] && cp .jbm1/part0 "$JB_WORK/part0"
  rm -rf "$JB_WORK/sweep"
  timeout ${SWEEP_TIMEOUT:-330} python3 benchmarks/sweep_efficiency.py --results-dir "$OUT" --work-dir $JB_WORK/sweep \
    --modes reuse 2>&1 | grep -vE "phase|^\s*$" | tee "$OUT/sweep.log" | tail -8
  cp "$OUT"/sweep-efficiency-*.json "$JB_WORK/sweep-reuse.json" 2>/dev/null
  ;;
sweep1)   # the one-worker-per-trial side of the sweep benchmark (merged with the reuse side of `sweep`)
  rm -rf "$JB_WORK/sweep1"
  timeout ${SWEEP_TIMEOUT:-200} python3 benchmarks/sweep_efficiency.py --results-dir "$OUT" --work-dir $JB_WORK/sweep1 \
    --modes one_worker_per_trial --repeats-one-worker 1 --merge "$JB_WORK/sweep-reuse.json" 2>&1 \
    | grep -vE "phase|^\s*$" | tee "$OUT/sweep1.log" | tail -8
  ;;
quickstart)
  rm -rf "$JB_WORK/qs"
  timeout 150 python3 -m joulebench.cli run benchmarks/studies/quickstart-cuda.yaml --out $JB_WORK/qs >"$OUT/quickstart.log" 2>&1
  echo "quickstart rc=$?"; tail -15 "$OUT/quickstart.log"
  python3 benchmarks/summarize_study.py $JB_WORK/qs --out "$OUT/quickstart-summary.json"
  ;;
repeat)
  prepare_real
  rm -rf "$JB_WORK/rep"
  svr=--skip-synthetic-vs-real; [ -d $REAL ] && svr="--real-model $REAL --svr-runs 3"
  timeout ${REPEAT_TIMEOUT:-540} python3 benchmarks/repeatability.py $svr --off-runs 0 --results-dir "$OUT" \
    --work-dir $JB_WORK/rep 2>&1 | grep -vE "phase" | tee "$OUT/repeatability.log" | tail -12
  ;;
adaptive)   # issue 10's open proof: adaptive repeats until the J/token CI half-width is 2 % (eager generate)
  rm -rf "$JB_WORK/adapt"
  timeout ${REPEAT_TIMEOUT:-560} python3 benchmarks/repeatability.py --adaptive --adaptive-max ${ADAPT_MAX:-25} --batch-sizes ${ADAPT_BS:-16} \
    --static-batch-sizes --overhead-pairs 0 --off-runs 0 --skip-synthetic-vs-real --results-dir "$OUT" \
    --work-dir $JB_WORK/adapt 2>&1 | grep -vE "phase" | tee "$OUT/adaptive.log" | tail -6
  ;;
overhead)   # meters on/off in adjacent windows of one process, compiled decode (low host noise)
  timeout 300 python3 benchmarks/repeatability.py --only-overhead --overhead-cache static --overhead-batch-size 64 \
    --overhead-pairs ${PAIRS:-24} --overhead-window-s 4 --results-dir "$OUT" --work-dir $JB_WORK/ov 2>&1 \
    | grep -vE "phase" | tail -3
  ;;
svr)
  prepare_real
  rm -rf "$JB_WORK/svr"
  [ -d $REAL ] || { echo "no real weights at $REAL: synthetic_vs_real not run"; exit 3; }
  timeout 400 python3 benchmarks/repeatability.py --only-synthetic-vs-real --real-model $REAL --results-dir "$OUT" \
    --work-dir $JB_WORK/svr 2>&1 | grep -vE "phase" | tee "$OUT/svr.log" | tail -8
  ;;
multigpu)
  rm -rf "$JB_WORK/mg"
  timeout 50 python3 -m pytest -m gpu tests/gpu -v -s -p no:cacheprovider -k "multi_gpu or cuda_ordinals" 2>&1 \
    | tee "$OUT/pytest-gpu-2gpu.log" | tail -8
  timeout 240 python3 benchmarks/multigpu.py --out "$OUT/multigpu.json" --work-dir $JB_WORK/mg 2>&1 | grep -vE "phase" \
    | tee "$OUT/multigpu.log" | tail -12
  tar czf "$OUT/multigpu-trials.tgz" -C $JB_WORK/mg split_cuda0_1/trials single_cuda0/trials 2>/dev/null
  ;;
esac
ls -la "$OUT"
