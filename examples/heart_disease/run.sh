#!/usr/bin/env bash
# The four-hospital federation with the real CLI verbs, as operators would run them.
#
#   examples/heart_disease/run.sh WORKDIR [ROUNDS] [METHOD]
#
# METHOD: any of `fedrema methods` (default fedrema), e.g. pfednet or mr-mtl.
#
# WORKDIR gets: hospitals/ (each hospital's own CSV files), workspace/ (the only folder the
# parties share), coordinator/ and one private state folder per hospital, models/ (exports).
# Every command below is what a person at that hospital (or the coordinator) would type.
set -euo pipefail

WORK=${1:?usage: run.sh WORKDIR [ROUNDS] [METHOD]}
ROUNDS=${2:-5}
METHOD=${3:-fedrema}
source "$(dirname "$0")/find_cli.sh"
SITES=(cleveland hungary switzerland va)
WS="$WORK/workspace"

if [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
  echo "run.sh: $WORK is not empty; give a new folder" >&2
  exit 1
fi
mkdir -p "$WORK"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Each hospital's data (FLamby's split of the UCI heart-disease data)"
$FEDREMA prepare-data heart-disease --out "$WORK/hospitals"

step "Coordinator: create the federation"
$FEDREMA init -w "$WS" -s "$WORK/coordinator" --preset heart-disease --federation-id heart \
  --method "$METHOD" --rounds "$ROUNDS" --epsilon 3 --delta 1e-5
FINGERPRINT=$($FEDREMA status -w "$WS" --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["coordinator_fingerprint"])')
echo "coordinator fingerprint, read to every hospital by phone: $FINGERPRINT"

step "Each hospital: join with its own data and state folder"
for s in "${SITES[@]}"; do
  $FEDREMA init -w "$WS" -s "$WORK/$s" --site "$s" \
    --train "$WORK/hospitals/${s}_train.csv" --test "$WORK/hospitals/${s}_test.csv" \
    --coordinator-fingerprint "$FINGERPRINT"
done

step "Coordinator: compare fingerprints, approve the roster"
$FEDREMA approve -s "$WORK/coordinator"
$FEDREMA approve -s "$WORK/coordinator" --all
$FEDREMA status -s "$WORK/coordinator"

step "Round 1 key exchange (secure aggregation setup)"
for s in "${SITES[@]}"; do $FEDREMA submit -s "$WORK/$s"; done
$FEDREMA aggregate -s "$WORK/coordinator"
for s in "${SITES[@]}"; do $FEDREMA submit -s "$WORK/$s"; done
$FEDREMA aggregate -s "$WORK/coordinator"

for r in $(seq 1 "$ROUNDS"); do
  step "Round $r: local DP-SGD and masked updates"
  $FEDREMA status -s "$WORK/${SITES[0]}"
  for s in "${SITES[@]}"; do
    $FEDREMA train-local -s "$WORK/$s"
    $FEDREMA submit -s "$WORK/$s"
  done
  step "Round $r: coordinator closes the round; sites reveal unmasking shares"
  $FEDREMA aggregate -s "$WORK/coordinator"
  for s in "${SITES[@]}"; do $FEDREMA submit -s "$WORK/$s"; done
  step "Round $r: coordinator unmasks the sum and aggregates ($METHOD)"
  $FEDREMA aggregate -s "$WORK/coordinator"
done
$FEDREMA status -s "$WORK/coordinator"

step "Each hospital: its personalized model, evaluated on its own hold-out data"
for s in "${SITES[@]}"; do
  $FEDREMA personalize -s "$WORK/$s" --export "$WORK/models/$s"
done

step "Compliance: the privacy budget per hospital, verified from the signed ledgers"
$FEDREMA privacy report -w "$WS" --html "$WORK/privacy-report.html"
$FEDREMA audit -w "$WS"
echo "HTML report for the data-protection officer: $WORK/privacy-report.html"
