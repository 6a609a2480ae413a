#!/usr/bin/env bash
# Run main.py for every prune percent given, lt and reinit each, then compare exactly those runs.
#
#   scripts/sweep_prune_percent.sh [-j N] PERCENT... [-- MAIN_PY_FLAGS...]
#
# -j N runs N main.py processes at a time (default 1). Each run's output goes to a log file in a
# fresh folder (printed first); the run folder is read from its "results: <dir>" line, and
# combine_plots.py then draws those runs into combined_plots/ beside them. PYTHON picks the
# interpreter (default: the repository's .venv, else python3). Exit status: 0 when every run
# finished, 1 when one failed (the others still run and are drawn), 2 on bad usage.
set -uo pipefail

usage() {
    echo "usage: $0 [-j N] PERCENT... [-- MAIN_PY_FLAGS...]" >&2
    exit 2
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

jobs=1
percents=()
while (($#)); do
    case "$1" in
        -j)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: -j needs a positive whole number" >&2; exit 2; }
            jobs="$2"
            shift 2
            ;;
        --)
            shift
            break
            ;;
        -h | --help) usage ;;
        *)
            [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "error: $1 is not a prune percent (a number such as 20)" >&2; exit 2; }
            percents+=("$1")
            shift
            ;;
    esac
done
((${#percents[@]})) || usage
for flag in "$@"; do
    case "$flag" in
        --prune_type | --prune_type=* | --prune_percent | --prune_percent=* | --resume | \
            --resume=* | --start_iter | --start_iter=*)
            echo "error: $flag: the sweep sets --prune_type and --prune_percent itself" >&2
            exit 2
            ;;
    esac
done

logs="$(mktemp -d "${TMPDIR:-/tmp}/sweep_prune_percent.XXXXXX")"
echo "logs: $logs"

run_one() { # percent prune_type
    local log="$logs/$2_$1.log"
    if "$PYTHON" "$repo/main.py" --prune_type "$2" --prune_percent "$1" "${@:3}" >"$log" 2>&1; then
        echo "done: $2 $1% ($(grep '^results: ' "$log" | tail -n 1))"
    else
        echo "failed: $2 $1% ($(grep -a 'error' "$log" | tail -n 1)); see $log"
        return 1
    fi
}

failed=0
running=0
for percent in "${percents[@]}"; do
    for prune_type in lt reinit; do
        if ((running >= jobs)); then
            wait -n || failed=1
            running=$((running - 1))
        fi
        run_one "$percent" "$prune_type" "$@" &
        running=$((running + 1))
    done
done
while ((running > 0)); do
    wait -n || failed=1
    running=$((running - 1))
done

mapfile -t made < <(cat "$logs"/*.log | grep -a '^results: ' | sed 's/^results: //')
if ((${#made[@]})); then
    dpi=1200 # main.py's default --plot_dpi
    for ((i = 1; i <= $#; i++)); do
        case "${!i}" in
            --plot_dpi=*) dpi="${!i#--plot_dpi=}" ;;
            --plot_dpi) j=$((i + 1)); dpi="${!j}" ;;
        esac
    done
    "$PYTHON" "$repo/combine_plots.py" --dpi "$dpi" "${made[@]}" || failed=1
fi
exit "$failed"
