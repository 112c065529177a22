#!/usr/bin/env bash
# The roster over a study's life, with the real CLI verbs (one process per command):
#
#   examples/heart_disease/roster_scenario.sh WORKDIR
#
#   round 1  four hospitals; switzerland goes offline during the key exchange, and the
#            coordinator closes the phase on the quorum (`aggregate --close`, t = 3 of 4);
#            switzerland comes back while round 1 trains and advertises keys for round 2
#   round 2  switzerland is back; the coordinator approves a fifth hospital and cleveland's
#            new identity key (`rotate-key`), both in force from round 3
#   round 3  five hospitals (t = 4 of 5); cleveland signs with its new key
#   then     `fedrema audit` and `fedrema privacy report` verify every round's ledger entries,
#            rounds 1-2 of cleveland under its old key, round 3 under its new one
#
# The fifth hospital: the heart-disease data has four. Before anyone joins, hungary's training
# file is split in two: hungary keeps the odd data rows, "hungary-annex" gets the even rows
# (both evaluate on hungary's hold-out file). No record is in two sites' data.
set -euo pipefail

WORK=${1:?usage: roster_scenario.sh WORKDIR}
source "$(dirname "$0")/find_cli.sh"
if [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
  echo "roster_scenario.sh: $WORK is not empty; give a new folder" >&2
  exit 1
fi
mkdir -p "$WORK"
WS="$WORK/workspace"
C="$WORK/coordinator"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
submit() { for s in "$@"; do $FEDREMA submit -s "$WORK/$s"; done; }
train() { for s in "$@"; do $FEDREMA train-local -s "$WORK/$s"; $FEDREMA submit -s "$WORK/$s"; done; }
join() {
  $FEDREMA init -w "$WS" -s "$WORK/$1" --site "$1" --train "$2" --test "$3" \
    --coordinator-fingerprint "$FINGERPRINT"
}

step "Data: four hospitals; hungary's training rows split for a fifth"
$FEDREMA prepare-data heart-disease --out "$WORK/hospitals"
H="$WORK/hospitals"
awk 'NR == 1 || NR % 2 == 0' "$H/hungary_train.csv" >"$H/hungary-half_train.csv"
awk 'NR == 1 || NR % 2 == 1' "$H/hungary_train.csv" >"$H/hungary-annex_train.csv"

step "Coordinator: a 3-round federation; four hospitals join; the roster is signed"
$FEDREMA init -w "$WS" -s "$C" --preset heart-disease --federation-id heart-roster \
  --rounds 3 --epsilon 3 --delta 1e-5
FINGERPRINT=$($FEDREMA status -w "$WS" --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["coordinator_fingerprint"])')
join cleveland "$H/cleveland_train.csv" "$H/cleveland_test.csv"
join hungary "$H/hungary-half_train.csv" "$H/hungary_test.csv"
join switzerland "$H/switzerland_train.csv" "$H/switzerland_test.csv"
join va "$H/va_train.csv" "$H/va_test.csv"
$FEDREMA approve -s "$C" --all

step "Round 1: switzerland goes offline during the key exchange; closed on the quorum"
submit cleveland hungary switzerland va      # key adverts
$FEDREMA aggregate -s "$C"                   # U1(1): four sites
submit cleveland hungary va                  # switzerland is offline: no key shares
$FEDREMA aggregate -s "$C" --close           # U2(1) on 3 of 4 (t = 3)
submit switzerland                           # back: keys for round 2, the next it can join
train cleveland hungary va
$FEDREMA aggregate -s "$C"                   # round 1 closed; U1(2) with switzerland
submit cleveland hungary switzerland va      # unmasking shares (1), key shares (2)
$FEDREMA aggregate -s "$C"                   # round 1 finished on 3 sites; U2(2)

step "Between rounds: a fifth hospital enrolls, cleveland rotates its key"
join hungary-annex "$H/hungary-annex_train.csv" "$H/hungary_test.csv"
$FEDREMA rotate-key -s "$WORK/cleveland"
$FEDREMA approve -s "$C"                     # the list: compare fingerprints first
$FEDREMA approve -s "$C" hungary-annex cleveland   # roster version 2, from round 3
submit hungary-annex                         # its keys for round 3

step "Round 2: four hospitals, switzerland back"
train cleveland hungary switzerland va
$FEDREMA aggregate -s "$C"                   # round 2 closed; U1(3) with hungary-annex
# hungary-annex shares its round-3 keys with the others' unmasking step: the coordinator
# fixes round 3's masking roster as soon as round 2 finishes
submit cleveland hungary switzerland va hungary-annex
$FEDREMA aggregate -s "$C"

step "Round 3: five hospitals, cleveland on its new key"
train cleveland hungary switzerland va hungary-annex
$FEDREMA aggregate -s "$C"
submit cleveland hungary switzerland va hungary-annex
$FEDREMA aggregate -s "$C"
$FEDREMA status -s "$C"

step "Compliance: every round's ledger entries verify under the key in force for that round"
$FEDREMA audit -w "$WS"
$FEDREMA privacy report -w "$WS" --html "$WORK/privacy-report.html"
