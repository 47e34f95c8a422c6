#!/usr/bin/env bash
# Fuzzes the operations API described by /openapi.json with schemathesis 4, against the
# debug binary that `cargo test` built: no answer may be a 5xx or a status code the
# document does not list for that operation; methods a path lacks must get 405 with an
# `Allow` header; an operation that needs a token must refuse requests without a valid
# one. Runs once as an auditor and once as a clinician, with
# a bounded number of examples per operation and a time bound per run. Any finding, a
# server that does not start, or a run over its time bound fails the script.
#
# Usage: tests/clients/schemathesis.sh   (from anywhere; needs python3 with venv)
# Tunables: SCHEMATHESIS_EXAMPLES (per operation, default 100), SCHEMATHESIS_SEED,
# SCHEMATHESIS_TIMEOUT (seconds per run, default 240).
set -euo pipefail
cd "$(dirname "$0")/../.."

examples="${SCHEMATHESIS_EXAMPLES:-100}"
# A fixed seed keeps CI reproducible; set SCHEMATHESIS_SEED to explore other inputs.
seed="${SCHEMATHESIS_SEED:-20261130}"
run_timeout="${SCHEMATHESIS_TIMEOUT:-240}"
bin="target/debug/carevault"
venv="$PWD/target/schemathesis-venv"
python="python3"
[ -x /usr/bin/python3 ] && python=/usr/bin/python3

if [ ! -x "$bin" ]; then
  cargo build --bin carevault
fi

if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "== installing schemathesis 4 into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.*'
fi
"$venv/bin/schemathesis" --version

work="$(mktemp -d)"
server_pid=""
fuzz_pid=""
stop() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop "$fuzz_pid"
  stop "$server_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# A free port on the loopback interface (the kernel picks it; the race window is small).
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
base="http://127.0.0.1:$port"

# The server and the token command share one data directory (development secret, keys)
# and one SQLite file; nothing from the caller's environment leaks in. `env` execs the
# binary, so the pid of `env ... &` is the server's own.
settings=(
  -u CAREVAULT_CONFIG -u CAREVAULT_DATABASE_URL -u CAREVAULT_JWT_HS256_SECRET -u CAREVAULT_JWKS_FILE
  -u CAREVAULT_ENV -u CAREVAULT_PUBLIC_URL
  CAREVAULT_ADDR="127.0.0.1:$port"
  CAREVAULT_DATA_DIR="$work/data"
  CAREVAULT_LOG_DIR="$work/logs"
  CAREVAULT_POLICIES_DIR="$PWD/policies"
  CAREVAULT_RATE_LIMIT=0
  RUST_LOG=warn
)

env "${settings[@]}" "$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 300); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited during start:" >&2
    tail -n 50 "$work/server.log" >&2
    exit 1
  fi
  if "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$base/readyz" 2>/dev/null; then
    ready=yes
    break
  fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "the server was not ready within 60 s:" >&2
  tail -n 50 "$work/server.log" >&2
  exit 1
fi

auditor="$(env "${settings[@]}" "$bin" token --sub zz-fuzz-auditor --tenant clinic-a --role auditor --ttl 3600)"
clinician="$(env "${settings[@]}" "$bin" token --sub zz-fuzz-clinician --tenant clinic-a --role clinician --fhir-user Practitioner/zz-fuzz --ttl 3600)"

passed=0
failed=0
for who in auditor clinician; do
  token="${!who}"
  echo "== schemathesis as $who ($examples examples per operation, seed $seed, at most $run_timeout s)"
  status=0
  # In the background and awaited, so that a signal to this script is handled at once;
  # from the temporary directory, so that schemathesis' cache stays out of the work tree.
  (cd "$work" && exec timeout --kill-after=10 "$run_timeout" \
    "$venv/bin/schemathesis" run "$base/openapi.json" \
      --header "Authorization: Bearer $token" \
      --checks not_a_server_error,status_code_conformance,unsupported_method,allow_header_conformance,ignored_auth \
      --max-examples "$examples" \
      --workers 1 \
      --seed "$seed" \
      --request-timeout 30 \
      --no-color) &
  fuzz_pid=$!
  wait "$fuzz_pid" || status=$?
  fuzz_pid=""
  if [ "$status" -ne 0 ]; then
    if [ "$status" -ge 124 ]; then
      echo "schemathesis as $who did not finish within $run_timeout s (exit $status)" >&2
    else
      echo "schemathesis as $who found failures (exit $status)" >&2
    fi
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
done

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "the server died during the run" >&2
  failed=$((failed + 1))
fi
if [ "$failed" -ne 0 ]; then
  echo "server log tail:" >&2
  tail -n 30 "$work/server.log" >&2
fi
echo "schemathesis: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
