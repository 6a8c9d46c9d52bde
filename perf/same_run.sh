#!/usr/bin/env bash
# Calls per second of this crate's `flood` example and of the tarpc baseline
# (perf/tarpc_flood), measured in the same run: both are built (release), then ROUNDS
# alternating rounds run, ours first in each, with the same load: 2 client processes, each
# keeping 256 `echo` calls waiting, over a Unix socket, for SECONDS seconds. Prints each
# round, the medians and the ratio ours/tarpc, then one JSON line.
#
#   perf/same_run.sh [--seconds S] [--rounds N] [--codec json|bincode]
#
# Defaults: 10 s, 3 rounds, tarpc's JSON codec. Runs from any directory; needs bash, cargo,
# coreutils, sed and awk. Each tool's meter lines go to a log in a temporary directory, named at
# the end; a failed run, or one that lost calls, fails the script.
set -euo pipefail

seconds=10
rounds=3
codec=json
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --codec) codec="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "same_run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
logs="$(mktemp -d "${TMPDIR:-/tmp}/same_run.XXXXXX")"

echo "building (release): examples/flood, perf/tarpc_flood" >&2
cargo build --release --quiet --example flood
cargo build --release --quiet --manifest-path perf/tarpc_flood/Cargo.toml
tarpc="$root/perf/tarpc_flood/target/release/tarpc_flood"

load=(--clients 2 --inflight 256 --seconds "$seconds")

# field NAME JSON: a number from a flat JSON line.
field() {
    sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"
}

# run NAME LOG COMMAND...: runs one tool, prints its round line, keeps its JSON line in $line.
run() {
    local name="$1" log="$2"
    shift 2
    if ! line="$("$@" 2>"$log" | tail -n 1)"; then
        echo "same_run.sh: $name failed (see $log)" >&2
        exit 1
    fi
    local rate lost
    rate="$(field msgs_per_s "$line")"
    lost="$(field lost "$line")"
    if [ -z "$rate" ]; then
        echo "same_run.sh: $name printed no result (see $log)" >&2
        exit 1
    fi
    printf '  %-9s %8s calls/s  p50 %8s us  p99 %8s us  lost %s\n' \
        "$name" "$rate" "$(field p50_us "$line")" "$(field p99_us "$line")" "$lost"
    if [ "$lost" != 0 ]; then
        echo "same_run.sh: $name lost $lost calls (see $log)" >&2
        exit 1
    fi
}

ours=()
theirs=()
for round in $(seq 1 "$rounds"); do
    echo "round $round/$rounds"
    run diarrhoea "$logs/flood.$round.log" \
        cargo run --release --quiet --example flood -- --mode call "${load[@]}"
    ours+=("$(field msgs_per_s "$line")")
    run tarpc "$logs/tarpc.$round.log" "$tarpc" --codec "$codec" "${load[@]}"
    theirs+=("$(field msgs_per_s "$line")")
done

median() {
    printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
join() {
    local IFS=,
    echo "$*"
}
ours_median="$(median "${ours[@]}")"
tarpc_median="$(median "${theirs[@]}")"
ratio="$(awk -v a="$ours_median" -v b="$tarpc_median" 'BEGIN { printf "%.2f", a / b }')"

echo "median    diarrhoea $ours_median calls/s, tarpc ($codec) $tarpc_median calls/s"
echo "ratio     ours/tarpc = $ratio"
echo "logs      $logs" >&2
printf '{"seconds":%s,"rounds":%s,"tarpc_codec":"%s","diarrhoea_msgs_per_s":[%s],"tarpc_msgs_per_s":[%s],"diarrhoea_median":%s,"tarpc_median":%s,"ratio":%s}\n' \
    "$seconds" "$rounds" "$codec" "$(join "${ours[@]}")" "$(join "${theirs[@]}")" \
    "$ours_median" "$tarpc_median" "$ratio"
