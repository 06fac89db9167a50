# Shared by bench/run and bench/soak: process control, pinning, /proc readings, wrk runs.
# shellcheck shell=bash disable=SC2034 # variables used by the scripts that source this file

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
OUT="${BENCH_OUT:-$BENCH/out}"
DATA="$OUT/data"
EXPORTER="$ROOT/target/release/nuki-exporter"
BASELINE="$ROOT/target/release/examples/baseline_server"
PROMETHEUS_ENCODER="$ROOT/target/release/examples/prometheus_encoder"
SECRET=bench-secret
CLK_TCK=$(getconf CLK_TCK)
PY=(python3 "$BENCH/bench.py")

# Server on core 0, load generator and scraper on core 1 (override with BENCH_SERVER_CPU /
# BENCH_CLIENT_CPU; no pinning on a single-CPU machine).
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
if [[ $(nproc --all) -ge 2 ]] && command -v taskset >/dev/null; then
    ON_SERVER_CPU=(taskset -c "$SERVER_CPU")
    ON_CLIENT_CPU=(taskset -c "$CLIENT_CPU")
else
    echo "warning: fewer than 2 CPUs or no taskset: server and load generator are not pinned" >&2
    ON_SERVER_CPU=()
    ON_CLIENT_CPU=()
    SERVER_CPU=all CLIENT_CPU=all
fi
# BENCH_NICE=-10 (as root) runs servers, wrk and the scraper ahead of other work on the machine
# (a compile, say), which then gets about a tenth of each core instead of half. With autogroup
# scheduling (kernel.sched_autogroup_enabled=1, the default) niceness only orders threads within
# one session, so it is the session's autogroup that is reniced (restored on exit): the threads
# inside keep their own niceness, as in production (the exporter's metrics encoder runs below its
# webhook threads). Without autogroups the processes themselves are reniced, which shifts every
# thread alike; the absolute niceness a thread sets itself then no longer matches production.
NICE=${BENCH_NICE:-0}
AUTOGROUP_NICE=
if [[ $NICE != 0 ]]; then
    if [[ -w /proc/self/autogroup && $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]]; then
        AUTOGROUP_NICE=$(awk '{ print $3 }' /proc/self/autogroup)
        if ! echo "$NICE" 2>/dev/null >/proc/self/autogroup; then
            echo "warning: cannot renice the autogroup to $NICE (not root?)" >&2
            AUTOGROUP_NICE='' NICE=0
        fi
    elif nice -n "$NICE" true 2>/dev/null; then
        echo "warning: no autogroup scheduling: renicing the processes by $NICE" >&2
        ON_SERVER_CPU=(nice -n "$NICE" "${ON_SERVER_CPU[@]}")
        ON_CLIENT_CPU=(nice -n "$NICE" "${ON_CLIENT_CPU[@]}")
    else
        echo "warning: cannot use nice $NICE (not root?)" >&2
        NICE=0
    fi
fi

STARTED_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

die() {
    log "FAILED: $*"
    exit 1
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $AUTOGROUP_NICE ]]; then
        echo "$AUTOGROUP_NICE" 2>/dev/null >/proc/self/autogroup || true
    fi
}
trap cleanup EXIT

require() {
    local tool=$1 package=$2
    command -v "$tool" >/dev/null || die "\`$tool\` is not installed (Debian package: $package)"
}

build() {
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --bin nuki-exporter --example baseline_server --example prometheus_encoder) >&2 ||
        die "cargo build"
}

# wait_http URL: until it answers 200 (5 s at most).
wait_http() {
    local url=$1 _i
    for _i in $(seq 50); do
        curl -fs -o /dev/null "$url" && return 0
        sleep 0.1
    done
    return 1
}

# start_exporter WEBHOOK_PORT METRICS_PORT MAX_SMARTLOCKS [FORWARD_URL]: sets EXPORTER_PID.
# With FORWARD_URL, the exporter relays every webhook there (forward.url).
start_exporter() {
    local webhook_port=$1 metrics_port=$2 max_smartlocks=$3 forward=()
    [[ -n ${4:-} ]] && forward=("NUKI_EXPORTER_FORWARD__URL=$4")
    env "${forward[@]}" \
    NUKI_EXPORTER_WEBHOOK__LISTEN=127.0.0.1:$webhook_port \
    NUKI_EXPORTER_METRICS__LISTEN=127.0.0.1:$metrics_port \
    NUKI_EXPORTER_WEBHOOK__SECRETS="[$SECRET]" \
    NUKI_EXPORTER_LIMITS__MAX_SMARTLOCKS=$max_smartlocks \
    NUKI_EXPORTER_LIMITS__MAX_SERIES=$((4 * max_smartlocks)) \
    NUKI_EXPORTER_LOG__LEVEL=warn \
        "${ON_SERVER_CPU[@]}" "$EXPORTER" &
    EXPORTER_PID=$!
    STARTED_PIDS+=("$EXPORTER_PID")
    wait_http "http://127.0.0.1:$metrics_port/-/healthy" || die "nuki-exporter did not start on :$metrics_port"
}

# start_baseline PORT: sets BASELINE_PID.
start_baseline() {
    local port=$1
    "${ON_SERVER_CPU[@]}" "$BASELINE" "127.0.0.1:$port" "${BENCH_BASELINE_BUILDER:-http1}" 2>/dev/null &
    BASELINE_PID=$!
    STARTED_PIDS+=("$BASELINE_PID")
    local _i
    for _i in $(seq 50); do
        curl -s -o /dev/null -X POST -d '{}' "http://127.0.0.1:$port/webhook" && return 0
        sleep 0.1
    done
    die "baseline_server did not start on :$port"
}

stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# process_ticks PID: user and system time of the process (all threads), in clock ticks, as
# "USER SYSTEM". User time is the process's own code and libraries; system time the kernel's.
process_ticks() {
    # Field 2 (comm) is in parentheses; count fields after the closing one.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'
}

# cpu_ticks PID: user + system time of the process (all threads), in clock ticks.
cpu_ticks() {
    process_ticks "$1" | awk '{ print $1 + $2 }'
}

# rss_kb PID / hwm_kb PID: resident set size now / at its peak, in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# cpu_busy N: busy ticks (user nice system irq softirq) of CPU N, then its steal ticks.
cpu_busy() {
    awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# machine_busy_pct SECONDS: share of all CPUs busy over that long (before a measured run).
machine_busy_pct() {
    local a b
    a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep "$1"
    b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}

# quiet_check: warn when something else is using the machine before a measured stage.
# With BENCH_WAIT_QUIET=SECONDS, first waits up to that long for the machine to go quiet.
quiet_check() {
    local busy waited=0
    busy=$(machine_busy_pct 1)
    while ((busy > 10 && waited < ${BENCH_WAIT_QUIET:-0})); do
        ((waited % 30 == 0)) && log "waiting for the machine to go quiet (${busy}% busy)"
        busy=$(machine_busy_pct 1)
        waited=$((waited + 1))
    done
    if ((busy > 10)); then
        log "warning: the machine is ${busy}% busy before measuring (load $(loadavg)); numbers will be noisy"
        ps -eo pid,pcpu,comm --sort=-pcpu | head -5 >&2
    fi
    echo "$busy"
}

# run_wrk OUTFILE URL DATAFILE DURATION_S [MAX_RESPONSES]: wrk on the client CPU, one thread,
# 64 connections (WRK_CONNECTIONS). Leaves wrk's output in OUTFILE and its CPU seconds (user+sys)
# in WRK_CPU_S.
run_wrk() {
    local outfile=$1 url=$2 datafile=$3 duration=$4 max=${5:-0}
    local timefile="$outfile.time"
    local timer=()
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -o "$timefile" -f "%U %S")
    WEBHOOKS_FILE=$datafile WEBHOOKS_MAX=$max \
        "${timer[@]}" "${ON_CLIENT_CPU[@]}" wrk -t1 -c"${WRK_CONNECTIONS:-64}" -d"${duration}s" --timeout 10s \
        -s "$BENCH/webhooks.lua" "$url" >"$outfile" 2>&1 || die "wrk failed: $(tail -3 "$outfile")"
    WRK_CPU_S=null
    [[ -s $timefile ]] && WRK_CPU_S=$(tail -1 "$timefile" | awk '{ printf "%.2f", $1 + $2 }')
    return 0
}

# gen FILE ARGS...: writes a webhook data file unless an identical one exists.
gen() {
    local file=$1
    shift
    local stamp="$file.args"
    if [[ -s $file && -f $stamp && "$(cat "$stamp")" == "$SECRET $*" ]]; then
        return 0
    fi
    "${PY[@]}" gen --out "$file" --secret "$SECRET" "$@" || die "generating $file"
    echo "$SECRET $*" >"$stamp"
}

meta_json() {
    local mode=$1
    local commit dirty=false
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && dirty=true
    printf '{"stage":"meta","mode":"%s","date":"%s","commit":"%s","dirty":%s,"cpu":"%s","cpus":%s,"load_before":"%s","wrk_version":"%s","rustc":"%s","server_cpu":"%s","client_cpu":"%s","baseline_builder":"%s","nice":%d}\n' \
        "$mode" "$(date -u +%Y-%m-%dT%H:%MZ)" "$commit" "$dirty" \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(nproc --all)" "$(loadavg)" \
        "$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }')" "$(rustc --version 2>/dev/null | awk '{ print $2 }')" \
        "$SERVER_CPU" "$CLIENT_CPU" "${BENCH_BASELINE_BUILDER:-http1}" "$NICE"
}

# wait_metric URL NAME MIN [--label 'k="v"'...]: until the sum of NAME's samples (with those
# labels) at URL is at least MIN; dies after 60 seconds.
wait_metric() {
    local url=$1 name=$2 min=$3 value _i
    shift 3
    for _i in $(seq 1200); do
        value=$("${PY[@]}" metric "$url" "$name" "$@" 2>/dev/null || echo 0)
        python3 -c 'import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))' "$value" "$min" && return 0
        sleep 0.05
    done
    die "$name at $url did not reach $min (last: $value)"
}

# jq_requests WRK_JSON: its request count.
jq_requests() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])["requests"])' "$1"; }

# fleet LOCKS: writes $DATA/api-LOCKS/smartlock (Nuki's documented shape, config objects
# included), served as GET /smartlock by start_api.
fleet() {
    local locks=$1 dir="$DATA/api-$1"
    mkdir -p "$dir"
    python3 - "$locks" "$dir/smartlock" <<'EOF'
import json, sys
locks, path = int(sys.argv[1]), sys.argv[2]
fleet = [{
    "smartlockId": 17000000 + i, "accountId": 4711, "type": 4, "authId": 1, "name": "Lock %d" % i,
    "favorite": False,
    "config": {"name": "Lock %d" % i, "latitude": 48.2, "longitude": 16.4, "autoUnlatch": False,
               "pairingEnabled": True, "buttonEnabled": True, "ledEnabled": True, "ledBrightness": 3,
               "timezoneOffset": 60, "daylightSavingMode": 1, "fobPaired": False, "fobAction1": 1,
               "fobAction2": 2, "fobAction3": 0, "singleLock": False, "operatingMode": 0,
               "advertisingMode": 0, "keypadPaired": True, "keypad2Paired": False, "homekitState": 0,
               "matterState": 0, "timezoneId": 37, "deviceType": 4, "wifiEnabled": True},
    "advancedConfig": {"totalDegrees": 900, "singleLockedPositionOffsetDegrees": -90,
                       "unlockedToLockedTransitionOffsetDegrees": 0, "lockNgoTimeout": 20,
                       "singleButtonPressAction": 1, "doubleButtonPressAction": 4,
                       "detachedCylinder": False, "batteryType": 0, "automaticBatteryTypeDetection": True,
                       "unlatchDuration": 3, "autoLockTimeout": 300, "autoLockEnabled": False,
                       "nightModeEnabled": False, "immediateAutoLockEnabled": False},
    "state": {"mode": 2, "state": 1, "trigger": 0, "lastAction": 2, "batteryCritical": i % 97 == 0,
              "batteryCharging": False, "batteryCharge": 20 + i % 80, "keypadBatteryCritical": False,
              "doorsensorBatteryCritical": False, "doorState": 2, "ringToOpenTimer": 0, "nightMode": False},
    "firmwareVersion": 199175, "hardwareVersion": 2817, "serverState": 0, "adminPinState": 0,
    "virtualDevice": False, "creationDate": "2025-01-01T00:00:00.000Z",
    "updateDate": "2026-11-30T07:00:00.000Z",
} for i in range(locks)]
with open(path, "w") as f:
    json.dump(fleet, f)
EOF
}

# start_api LOCKS PORT: the Web API stand-in serving that fleet on the load generator's CPU;
# sets API_PID.
start_api() {
    (cd "$DATA/api-$1" && exec "${ON_CLIENT_CPU[@]}" python3 -m http.server --bind 127.0.0.1 "$2" >/dev/null 2>&1) &
    API_PID=$!
    STARTED_PIDS+=("$API_PID")
    wait_http "http://127.0.0.1:$2/smartlock" || die "API stand-in did not start"
}

# with_api PORT INTERVAL COMMAND...: runs COMMAND (start_exporter) with the exporter set to poll
# the stand-in on PORT every INTERVAL.
with_api() {
    local port=$1 interval=$2
    shift 2
    echo "bench-token" >"$DATA/api-token"
    NUKI_EXPORTER_API__TOKEN_FILE=$DATA/api-token \
    NUKI_EXPORTER_API__URL=http://127.0.0.1:$port \
    NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP=true \
    NUKI_EXPORTER_API__POLL_INTERVAL=$interval \
        "$@"
}
