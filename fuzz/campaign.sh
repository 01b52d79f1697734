#!/usr/bin/env bash
# A timed libFuzzer campaign on a copy of the seed corpus (new inputs never land in the tree).
# Usage: campaign.sh FUZZER CORPUS_DIR SECONDS
set -euo pipefail
fuzzer=$1 corpus=$2 seconds=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$corpus" "$work/corpus"
# -print_final_stats: executions and exec/s go into the test log.
"$fuzzer" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$work/" \
    "$work/corpus" 2>&1 | grep -E "^(stat::|#[0-9]+ +DONE|==[0-9]+==|SUMMARY|Done)" || true
if compgen -G "$work/crash-*" >/dev/null || compgen -G "$work/leak-*" >/dev/null ||
    compgen -G "$work/timeout-*" >/dev/null; then
    echo "the fuzzer found a failing input:" >&2
    for f in "$work"/crash-* "$work"/leak-* "$work"/timeout-*; do
        [[ -e $f ]] && { echo "$f:"; od -c "$f" | head -20; } >&2
    done
    exit 1
fi
echo "no crash, leak or timeout in ${seconds}s"
