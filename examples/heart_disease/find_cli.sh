# Sourced by the example scripts: sets FEDREMA to the CLI to run. $FEDREMA if set, else
# `fedrema` on PATH, else the one `make demo`/`make test` set up in the repository's .venv.
if [ -z "${FEDREMA:-}" ]; then
  _repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  if command -v fedrema >/dev/null 2>&1; then
    FEDREMA=fedrema
  elif [ -x "$_repo/.venv/bin/fedrema" ]; then
    FEDREMA="$_repo/.venv/bin/fedrema"
  else
    echo "$(basename "$0"): no fedrema command: run \`make demo\` once (it sets up .venv), or set FEDREMA" >&2
    exit 1
  fi
fi
