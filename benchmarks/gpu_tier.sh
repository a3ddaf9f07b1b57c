#!/usr/bin/env bash
# The GPU test tier (pytest -m gpu tests/gpu, one GPU), from the repository root: the study test alone first (a
# CUDA context left in the pytest process by the meter tests would be another user's process to the study it
# starts), then the meter tests without the two-GPU one. Logs: $OUT/pytest-gpu-study.log, $OUT/pytest-gpu.log;
# prints the lines that matter. Used by benchmarks/gpu_session.sh (tier, study) and benchmarks/gpu_proofs.sh (tier).
#   bash benchmarks/gpu_tier.sh [study]      study: the study test only
# TIER_STUDY_TIMEOUT (default 150 s) and TIER_METERS_TIMEOUT (200 s) bound the two runs.
set -u
OUT=${OUT:?set OUT to the folder for the logs}
mkdir -p "$OUT"
timeout "${TIER_STUDY_TIMEOUT:-150}" python3 -m pytest -m gpu tests/gpu/test_gpu_study.py -v -s -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu-study.log" | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed| ok "
[ "${1:-}" = study ] && exit 0
timeout "${TIER_METERS_TIMEOUT:-200}" python3 -m pytest -m gpu tests/gpu/test_gpu_meters.py -v -s -p no:cacheprovider \
  -k "not multi_gpu" 2>&1 | tee "$OUT/pytest-gpu.log" \
  | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed|W, CV|idle .* W|counter period"
