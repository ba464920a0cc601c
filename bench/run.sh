#!/usr/bin/env bash
# rxfed encrypted record writes, measured side by side with the peers in one run.
#
# Each of R rounds runs, one after the other on this machine:
#   (a) the Synapse peer            bash "$SHARED/peers/synapse/run.sh"
#   (b) the aiohttp+SQLite ceiling  CEILING_SYNC_MODE=FULL bash "$SHARED/peers/synapse/ceiling.sh"
#   (c) our node: `rxfed node init` in a fresh temp dir on a free port, rate limits raised,
#       `rxfed node run` in the background, launch -> first 200 from GET /health (startup_s),
#       IDLE_S s idle, VmRSS (rss_idle_mib), then bench/load.py, then SIGTERM (SIGKILL
#       after 20 s) and the temp dir removed.
# Every raw JSON line and output goes to bench/results/<timestamp>/; at the end
# bench/report.py prints the medians over the R rounds and the targets.
#
# Before every measured run (peers and ours alike) the page cache's dirty pages are written
# out (`sync`) and the disk is left SETTLE_S seconds: the writeback of the run before
# (Synapse's database, the ceiling's WAL) would otherwise land inside the next one's fsyncs.
# The dirty and writeback kB before and after settling go to settle.log.
# MODE=sweep (or bench/sweep.sh) runs only the node's concurrency sweep instead: R rounds of
# (c) with bench/sweep.py at SWEEP_CONC (16,64,256,1024,4096), SWEEP_N writes per level at
# least (4000), the node's own admission settings left as they are.
#
# Environment: R (3), N (2000), CONC (1,16), IDLE_S (5), SETTLE_S (3), PATIENTS (16), PROFILE_ROOT (/dev/shm
#   if it is a writable directory: the patients' profile dirs stand for the patients' own
#   devices, so the SDK's rewrite of state.json after every write (a temp file and a
#   rename) stays off the disk the node's WAL is on, as the peers' load client writes
#   nothing to disk; set it empty to keep them in the node's temp dir),
#   PYTHON (python3; must have rxfed installed), SHARED (the `shared` folder beside the repo),
#   RXFED_PEERS_CACHE (/tmp/rxfed-peers, the peers' venvs), SYNAPSE_PORT, CEILING_PORT.
# Exit code: 0 if every step of every round completed, 3 if any failed or was incomplete.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
SHARED="${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}"
PYTHON="${PYTHON:-python3}"
R="${R:-3}"
N="${N:-2000}"
CONC="${CONC:-1,16}"
IDLE_S="${IDLE_S:-5}"
SETTLE_S="${SETTLE_S:-3}"
PATIENTS="${PATIENTS:-16}"
MODE="${MODE:-compare}"
SWEEP_CONC="${SWEEP_CONC:-16,64,256,1024,4096}"
SWEEP_N="${SWEEP_N:-4000}"
if [[ -z ${PROFILE_ROOT+set} ]]; then
    PROFILE_ROOT=""
    [[ -d /dev/shm && -w /dev/shm ]] && PROFILE_ROOT=/dev/shm
fi
export PYTHON N CONC IDLE_S  # the peer scripts read the same settings

if [[ $MODE != compare && $MODE != sweep ]]; then
    echo "MODE must be compare (the default) or sweep, not $MODE" >&2
    exit 2
fi
if [[ ! -f $SHARED/peers/lib.sh ]]; then
    echo "no peer benchmarks in $SHARED/peers (set SHARED to the folder holding peers/)" >&2
    exit 2
fi
# start_server, wait_health, stop_server, run_child, stop_child and say: the same helpers the
# peers use, so startup and shutdown are measured and done the same way.
# shellcheck source=/dev/null
source "$SHARED/peers/lib.sh"
PY="$PYTHON"  # wait_health's interpreter (stdlib only)

if ! [[ $R =~ ^[1-9][0-9]*$ && $N =~ ^[1-9][0-9]*$ && $PATIENTS =~ ^[1-9][0-9]*$ && $SWEEP_N =~ ^[1-9][0-9]*$ ]]; then
    say "R, N, PATIENTS and SWEEP_N must be positive integers"
    exit 2
fi
if ! "$PYTHON" -c 'import rxfed.client.sdk, aiohttp' 2>/dev/null; then
    say "$PYTHON cannot import rxfed and aiohttp; set PYTHON to the project's interpreter (e.g. PYTHON=/tmp/venv/bin/python)"
    exit 2
fi
# `python -m rxfed` if the package has a __main__, else the console script beside $PYTHON.
if "$PYTHON" -m rxfed --help >/dev/null 2>&1; then
    RXFED=("$PYTHON" -m rxfed)
else
    PYBIN="$(command -v "$PYTHON")" || { say "$PYTHON not found"; exit 2; }
    RXFED=("$(dirname "$PYBIN")/rxfed")
    if [[ ! -x ${RXFED[0]} ]]; then
        say "'$PYTHON -m rxfed' does not work and there is no rxfed console script at ${RXFED[0]}"
        exit 2
    fi
fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$BENCH/results/$STAMP"
mkdir -p "$RESULTS"
NODE_DIR=""
FAILED=()
T_START=$(date +%s)

# remove_node_dir : the node's temp dir, and the profiles under PROFILE_ROOT if any.
remove_node_dir() {
    [[ -n $NODE_DIR ]] || return 0
    if [[ -L $NODE_DIR/profiles-link ]]; then
        rm -rf -- "$(readlink "$NODE_DIR/profiles-link")"
    fi
    rm -rf -- "$NODE_DIR"
    NODE_DIR=""
}

_cleanup() {
    local rc=$?
    stop_child
    stop_server
    remove_node_dir
    return "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run info, for whoever reads the results later.
"$PYTHON" - "$RESULTS/meta.json" "$BENCH/.." <<EOF
import json, os, platform, sys
from pathlib import Path
import aiohttp, rxfed
repo = Path(sys.argv[2]).resolve()
head = None
try:  # the checked-out commit, read from the files (no git command)
    ref = (repo / ".git" / "HEAD").read_text().strip()
    head = (repo / ".git" / ref[5:]).read_text().strip() if ref.startswith("ref: ") else ref
except OSError:
    pass
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)
json.dump({"stamp": "$STAMP", "R": $R, "N": $N, "conc": "$CONC", "idle_s": "$IDLE_S", "settle_s": "$SETTLE_S", "patients": $PATIENTS, "mode": "$MODE", "sweep_conc": "$SWEEP_CONC", "sweep_n": $SWEEP_N,
           "python": sys.version.split()[0], "python_path": sys.executable, "rxfed": rxfed.__version__,
           "aiohttp": aiohttp.__version__, "commit": head, "cpus": os.cpu_count(), "cpu": cpu,
           "kernel": platform.release(), "rxfed_command": "${RXFED[*]}",
           "profile_root": "${PROFILE_ROOT:-}" or None}, open(sys.argv[1], "w"), indent=1)
EOF

# keep_json NAME : the last line of NAME.out, if it is a JSON object, becomes NAME.json.
keep_json() {
    local name=$1
    tail -n 1 "$RESULTS/$name.out" >"$RESULTS/$name.json" 2>/dev/null || true
    if ! "$PYTHON" -c 'import json, sys; assert isinstance(json.load(open(sys.argv[1])), dict)' \
        "$RESULTS/$name.json" 2>/dev/null; then
        rm -f "$RESULTS/$name.json"
        return 1
    fi
}

# settle NAME : write out dirty pages and let the disk rest before NAME is measured.
settle() {
    local before after
    before="$(awk '/^(Dirty|Writeback):/ { printf "%s %s kB ", $1, $2 }' /proc/meminfo)"
    sync
    sleep "$SETTLE_S"
    after="$(awk '/^(Dirty|Writeback):/ { printf "%s %s kB ", $1, $2 }' /proc/meminfo)"
    echo "$1 before: $before| after sync + ${SETTLE_S}s: $after" >>"$RESULTS/settle.log"
}

# run_peer NAME CMD... : one peer script; its summary and JSON line go to NAME.out.
run_peer() {
    local name=$1 rc=0; shift
    say ""
    settle "$name"
    say "=== $name ($(date -u +%H:%M:%S))"
    run_child "$@" >"$RESULTS/$name.out" || rc=$?
    cat "$RESULTS/$name.out" >&2
    if ! keep_json "$name"; then
        say "$name: no JSON line (exit code $rc)"
        FAILED+=("$name")
    elif [[ $rc -ne 0 ]]; then
        say "$name: exit code $rc (incomplete)"
        FAILED+=("$name")
    fi
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status"
}

# raise_limits FILE : rate limits out of the way, in the [limits] table rxfed wrote.
raise_limits() {
    "$PYTHON" - "$1" <<'EOF'
import re, sys, tomllib
path = sys.argv[1]
want = {"requests_per_second": "1000000.0", "burst": "1000000",
        "anonymous_per_minute": "1000000.0", "anonymous_burst": "1000000",
        "anonymous_global_per_minute": "1000000.0", "anonymous_global_burst": "1000000"}
out, section, seen = [], None, set()
for line in open(path).read().splitlines(keepends=True):
    m = re.match(r"\s*\[([^\]]+)\]\s*(#.*)?$", line)
    if m:
        section = m.group(1).strip()
    else:
        m = re.match(r"(\s*)([A-Za-z0-9_]+)(\s*=\s*)", line)
        if section == "limits" and m and m.group(2) in want:
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{want[m.group(2)]}\n"
            seen.add(m.group(2))
    out.append(line)
text = "".join(out)
missing = "".join(f"{k} = {v}\n" for k, v in want.items() if k not in seen)
if missing:
    if re.search(r"(?m)^\[limits\]", text):
        text = re.sub(r"(?m)^\[limits\][^\n]*\n", lambda m: m.group(0) + missing, text, count=1)
    else:
        text += "\n[limits]\n" + missing
limits = tomllib.loads(text).get("limits", {})
wrong = {k: limits.get(k) for k in want if float(limits.get(k, 0)) != 1e6}
if wrong:
    sys.exit(f"could not raise the rate limits in {path}: {wrong}")
with open(path, "w") as f:
    f.write(text)
EOF
}

# run_rxfed NAME : our node, measured like the peers' measure_server, with bench/load.py.
run_rxfed() {
    local name=$1 mode=${2:-records} port startup_s rss profiles rc=0
    say ""
    say "=== $name ($(date -u +%H:%M:%S))"
    # (called from an `if`, so errexit is off in here: every step checks its own status)
    settle "$name"
    NODE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rxfed-bench.XXXXXX")" || return 1
    port="$(free_port)" || return 1
    "${RXFED[@]}" node init "$NODE_DIR/node" --name "rxfed bench" --port "$port" >"$NODE_DIR/init.log" 2>&1 \
        || { cat "$NODE_DIR/init.log" >&2; return 1; }
    raise_limits "$NODE_DIR/node/rxfed.toml" || return 1
    start_server "$NODE_DIR/server.log" "${RXFED[@]}" node run "$NODE_DIR/node"
    say "rxfed: pid $SERVER_PID, waiting for http://127.0.0.1:$port/health"
    if ! startup_s="$(wait_health "$port" 120)"; then
        cp "$NODE_DIR/server.log" "$RESULTS/$name.server.log" 2>/dev/null || true
        return 1
    fi
    if [[ $mode == sweep ]]; then
        say "healthy after $startup_s s; idle $IDLE_S s, then at least $SWEEP_N records at each concurrency of $SWEEP_CONC"
    else
        say "healthy after $startup_s s; idle $IDLE_S s, then $N records at concurrency $CONC"
    fi
    sleep "$IDLE_S"
    # the patients' profile dirs: in the node's temp dir (removed with it), or under PROFILE_ROOT
    profiles="$NODE_DIR/profiles"
    if [[ -n ${PROFILE_ROOT:-} ]]; then
        profiles="$(mktemp -d "$PROFILE_ROOT/rxfed-bench-profiles.XXXXXX")" || return 1
        ln -s "$profiles" "$NODE_DIR/profiles-link"  # so the cleanup below finds it
    fi
    rss="$(rss_mib "$SERVER_PID" 2>/dev/null)" || rss=""
    if [[ -z $rss ]]; then
        say "rxfed: the node (pid $SERVER_PID) exited while idle"
        cp "$NODE_DIR/server.log" "$RESULTS/$name.server.log" 2>/dev/null || true
        return 1
    fi
    if [[ $mode == sweep ]]; then
        run_child "$PYTHON" "$BENCH/sweep.py" --base "http://127.0.0.1:$port" --pid "$SERVER_PID" --n "$SWEEP_N" \
            --conc "$SWEEP_CONC" --patients "$PATIENTS" --rss-idle-mib "$rss" --startup-s "$startup_s" \
            --profiles "$profiles" --out "$RESULTS/$name.detail.json" >"$RESULTS/$name.out" || rc=$?
    else
        run_child "$PYTHON" "$BENCH/load.py" --mode "$mode" --base "http://127.0.0.1:$port" --pid "$SERVER_PID" --n "$N" \
            --conc "$CONC" --patients "$PATIENTS" --rss-idle-mib "$rss" --startup-s "$startup_s" --data-dir "$NODE_DIR/node" \
            --profiles "$profiles" --out "$RESULTS/$name.detail.json" >"$RESULTS/$name.out" || rc=$?
    fi
    stop_server
    cat "$RESULTS/$name.out" >&2
    if [[ $rc -ne 0 ]]; then
        # keep the end of the node's log for a failed run (it holds no plaintext)
        tail -n 200 "$NODE_DIR/server.log" >"$RESULTS/$name.server.log" 2>/dev/null || true
    fi
    remove_node_dir
    keep_json "$name" && return "$rc"
    say "$name: no JSON line"
    return 1
}

# finish : the report, and exit 3 if any step failed or was incomplete.
finish() {
    say ""
    say "all rounds done in $(($(date +%s) - T_START)) s; raw results in $RESULTS"
    "$PYTHON" "$BENCH/report.py" "$RESULTS" | tee "$RESULTS/report.md"
    if ((${#FAILED[@]})); then
        say "failed or incomplete: ${FAILED[*]}"
        exit 3
    fi
    exit 0
}

say "results in $RESULTS"
if [[ $MODE == sweep ]]; then
    say "R=$R rounds of the rxfed concurrency sweep: levels $SWEEP_CONC, at least $SWEEP_N writes per level"
    for ((i = 1; i <= R; i++)); do
        say ""
        say "##### round $i of $R"
        if ! run_rxfed "sweep-$i" sweep; then
            say "sweep-$i: failed or incomplete"
            FAILED+=("sweep-$i")
            stop_server
            remove_node_dir
        fi
    done
    finish
fi
say "R=$R rounds of: Synapse, ceiling (synchronous=FULL), rxfed records, rxfed posts, rxfed federation; N=$N, CONC=$CONC, IDLE_S=$IDLE_S, PATIENTS=$PATIENTS"
say "rxfed command: ${RXFED[*]}"
for ((i = 1; i <= R; i++)); do
    say ""
    say "##### round $i of $R"
    run_peer "synapse-$i" bash "$SHARED/peers/synapse/run.sh"
    run_peer "ceiling-full-$i" env CEILING_SYNC_MODE=FULL bash "$SHARED/peers/synapse/ceiling.sh"
    for mode in records posts; do
        name="rxfed-$i"
        [[ $mode == posts ]] && name="rxfed-posts-$i"
        if ! run_rxfed "$name" "$mode"; then
            say "$name: failed or incomplete"
            FAILED+=("$name")
            stop_server
            remove_node_dir
        fi
    done
    run_peer "federation-$i" "$PYTHON" "$BENCH/federation.py" --n "${FED_N:-5000}" --rate 100 --seconds "${FED_S:-10}"
done
finish
