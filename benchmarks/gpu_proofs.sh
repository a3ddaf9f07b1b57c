#!/usr/bin/env bash
# The GPU proofs of the container and vLLM work, in stages, from the repository root on a GPU machine
# without network (one machine, several calls: each call can bring at most one large piece).
# Figures go to $OUT (default benchmarks/results/gpu-run); scratch to $JB_WORK (default: joulebench-gpu
# in the temp folder, kept between stages). Inputs, in ignored folders of the checkout:
#   .gpu/whl/*.whl         joulebench's pure-Python needs the GPU image lacks (pydantic, docker, tenacity)
#   .gpu/aienergyscore_text_generation.jsonl   the AI Energy Score prompts
#   .gpu/zstd              a zstd binary (the image has none)
#   .gpu-podman/debs/      Podman's Debian packages (benchmarks/podman_gpu_debs.txt)
#   .vpN/vsite.tar.zst.part-*   the vLLM pieces (scripts/vllm-gpu-pack.sh), one per call
# Stages:
#   stash           copy the vLLM piece(s) this call brought into $JB_WORK/stash
#   containers      issue 20: process vs docker runner (Podman, GPU passed in) + the no-GPU control
#   vllm-install    scripts/vllm-gpu-install.sh over the stashed pieces -> .venvs/vllm
#   vllm PART... [--opt V ...]   benchmarks/vllm_gpu.py --parts PART... (mlenergy, twoclass, overhead) with
#                   its options (e.g. --points 512:1536); also $OUT/vllm-traces-PARTS.tar.gz: one trial record
#                   and its sampler timeline per study (real GPU traces for tests)
# Use `export OUT=...` so every stage writes where the caller collects.
set -u
OUT=${OUT:-benchmarks/results/gpu-run}
mkdir -p "$OUT"
JB_WORK=${JB_WORK:-$(dirname "$(mktemp -u)")/joulebench-gpu}
mkdir -p "$JB_WORK/stash"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
SITE=$JB_WORK/site
if [ ! -f "$SITE/.done" ] && compgen -G ".gpu/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl \
    && touch "$SITE/.done" || exit 1
fi
export PYTHONPATH=$PWD/src:$SITE
PROMPTS=$PWD/.gpu/aienergyscore_text_generation.jsonl
[ -f "$PROMPTS" ] || PROMPTS=$JB_WORK/prompts.jsonl
[ -f .gpu/aienergyscore_text_generation.jsonl ] && cp .gpu/aienergyscore_text_generation.jsonl "$JB_WORK/prompts.jsonl"
for z in .gpu/zstd .vp*/zstd; do [ -x "$z" ] && cp "$z" "$JB_WORK/zstd"; done
stamp=$(date +%H%M%S)
while [ $# -gt 0 ]; do
  stage=$1; shift
  echo "== $(date +%T) stage $stage"
  case $stage in
  stash)
    for p in .vp*/vsite.tar.zst.part-*; do [ -f "$p" ] && cp "$p" "$JB_WORK/stash/"; done
    ls -l "$JB_WORK/stash"
    ;;
  containers)
    nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit --format=csv > "$OUT/nvidia-smi.csv" 2>&1
    source benchmarks/podman_gpu_setup.sh .gpu-podman/debs || exit 1
    PY=$(command -v python3)
    mounts=(--mount /usr --mount "$PWD/src:/jb-src" --mount "$SITE:/jb-site")
    [ -d /opt ] && mounts+=(--mount /opt)
    timeout ${CONTAINERS_TIMEOUT:-480} python3 benchmarks/containers_gpu.py --prompts "$PROMPTS" \
      --image localhost/hostshell --python "$PY" --user 0:0 "${mounts[@]}" --out "$OUT/containers-gpu.json" 2>&1 \
      | tee "$OUT/containers.log" | grep -vE "^\s*$" | tail -40
    ;;
  vllm-install)
    JB_ZSTD=$JB_WORK/zstd bash scripts/vllm-gpu-install.sh "$JB_WORK"/stash/vsite.tar.zst.part-* \
      --site "$JB_WORK/vsite" 2>&1 | tee "$OUT/vllm-install.log" | tail -5
    ;;
  vllm)
    parts=()
    while [ $# -gt 0 ] && [[ $1 != -* ]] && [[ $1 =~ ^(mlenergy|twoclass|overhead)$ ]]; do parts+=("$1"); shift; done
    extra=()
    while [ $# -gt 0 ] && [[ $1 == --* ]]; do extra+=("$1" "$2"); shift 2; done
    tag=$(IFS=-; echo "${parts[*]}")
    timeout ${VLLM_TIMEOUT:-560} python3 benchmarks/vllm_gpu.py --parts "${parts[@]}" --prompts "$PROMPTS" \
      --json "$JB_WORK/vllm-mlenergy.json" --work-dir "$JB_WORK/vllm-$stamp" "${extra[@]}" 2>&1 \
      | tee "$OUT/vllm-$tag.log" | grep -vE "^\s*$" | tail -30
    cp "$JB_WORK/vllm-mlenergy.json" "$OUT/" 2>/dev/null
    # one trial's record and sampler timeline per study: real vLLM GPU traces for the tests
    traces=()
    for t in "$JB_WORK/vllm-$stamp"/*/trials; do
      rec=$(ls "$t"/*.json 2>/dev/null | head -1); [ -n "$rec" ] || continue
      d=$(dirname "$t"); id=$(basename "$rec" .json)
      traces+=("${rec#"$JB_WORK"/}")
      [ -f "$d/timeseries/$id.parquet" ] && traces+=("${d#"$JB_WORK"/}/timeseries/$id.parquet")
    done
    [ ${#traces[@]} -gt 0 ] && tar -czf "$OUT/vllm-traces-$tag.tar.gz" -C "$JB_WORK" "${traces[@]}"
    # server logs of the last studies, for a failure
    find "$JB_WORK/vllm-$stamp" -name "*server*.log" -newer "$JB_WORK/stash" 2>/dev/null | head -3 | \
      while read -r f; do tail -30 "$f" > "$OUT/$(basename "$f")"; done
    ;;
  *) echo "unknown stage $stage"; exit 2;;
  esac
done
