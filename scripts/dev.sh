#!/usr/bin/env bash
# scripts/dev.sh: the one entry point for working on rx (and for CI, through .ci/run).
#
#   scripts/dev.sh deps        install the missing Debian packages rx needs (as root)
#   scripts/dev.sh run [ARGS]  release build in build-run/, then run the demo server on
#                              127.0.0.1:8080 (extra ARGS go to the server)
#   scripts/dev.sh test        deps, then: a plain and an ASan+UBSan build (both --werror) with
#                              all their tests, a 60 s bench/soak, rx-http scaled out behind
#                              HAProxy (tests/scaleout), the unit suites and the app
#                              integration tests under valgrind, a TSan build with the unit
#                              and integration tests (apps on 4 threads) and the fuzz pass;
#                              prints every libcheck summary and one closing line
#                              "N passed, N failed"
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"

# Debian packages: build tools, libcheck, curl and python3 for integration tests, libevent for
# the bench peer, valgrind for the valgrind pass, clang and its libFuzzer runtime (libclang-rt-dev,
# not pulled in by clang) for the fuzz pass. libc6-dev is only a Recommends of gcc.
deps_packages=(meson ninja-build pkg-config check gcc libc6-dev python3 curl libevent-dev valgrind
    clang libclang-rt-dev)
# Only for the scale-out pass (tests/scaleout), so only `test` and `deps` install them: haproxy
# (whose package starts an idle service with no listener) and wrk, and iproute2 for ip netns.
scaleout_packages=(haproxy wrk iproute2)

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

log() { printf '\n=== %s\n' "$*"; }

# --- deps ---------------------------------------------------------------------------------

is_installed() {
    local status
    status=$(dpkg -s "$1" 2>/dev/null) || return 1
    [[ $status == *"Status: install ok installed"* ]]
}

# install_deps PACKAGES...: installs those that are missing.
install_deps() {
    if ! command -v dpkg >/dev/null 2>&1; then
        echo "dev.sh deps: no dpkg here (not Debian); make sure these are installed:" "$*" >&2
        return 0
    fi
    local missing=() pkg
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "dev.sh deps: missing packages: ${missing[*]}" >&2
        echo "run as root:" >&2
        echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y" \
            "--no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
}

# --- run ----------------------------------------------------------------------------------

is_builddir() { [[ -f $1/meson-private/coredata.dat ]]; }

cmd_run() {
    install_deps "${deps_packages[@]}"
    local dir=build-run
    if is_builddir "$dir"; then
        meson setup --reconfigure "$dir" --buildtype=release
    else
        meson setup "$dir" --buildtype=release
    fi
    ninja -C "$dir"
    local bin
    for bin in "$dir/apps/http-lite/rx-http" "$dir/apps/echo/rx-echo"; do
        if [[ -x $bin ]]; then
            echo "dev.sh run: $bin --listen 127.0.0.1:8080 $*" >&2
            exec "$bin" --listen 127.0.0.1:8080 "$@"
        fi
    done
    echo "dev.sh run: no demo server was built (looked for rx-http, then rx-echo in $dir/apps)" >&2
    exit 1
}

# --- test ---------------------------------------------------------------------------------

# One line per pass in $manifest: LABEL <tab> testlog.json or "-" <tab> meson test status or
# "build-failed". summarize reads it at the end.
manifest=""

# setup_fresh DIR ARGS...: configures DIR from scratch.
setup_fresh() {
    local dir=$1
    shift
    if is_builddir "$dir"; then
        meson setup --wipe "$dir" "$@"
    else
        rm -rf "$dir"
        meson setup "$dir" "$@"
    fi
}

# test_pass LABEL DIR LOG MESON-TEST-ARGS...: runs meson test in DIR; LOG is the name of the
# JSON log it writes in DIR/meson-logs (testlog.json; testlog-NAME.json with --setup NAME).
test_pass() {
    local label=$1 dir=$2 json="$2/meson-logs/$3"
    shift 3
    local rc=0
    rm -f "$json"
    log "[$label] meson test -C $dir $*"
    meson test -C "$dir" "$@" </dev/null || rc=$?
    [[ -f $json ]] || json=-
    printf '%s\t%s\t%s\n' "$label" "$json" "$rc" >>"$manifest"
}

# build_dir LABEL DIR SETUP-ARGS...: fresh configure + build. Returns 1 (and records the pass as
# failed) if the build failed.
build_dir() {
    local label=$1 dir=$2
    shift 2
    log "[$label] meson setup $dir $*"
    if ! setup_fresh "$dir" "$@" </dev/null || ! ninja -C "$dir" </dev/null; then
        echo "[$label] BUILD FAILED" >&2
        printf '%s\t-\tbuild-failed\n' "$label" >>"$manifest"
        return 1
    fi
}

# build_pass LABEL DIR SETUP-ARGS...: fresh configure + build + all tests. Returns 1 if the build
# failed.
build_pass() {
    build_dir "$@" || return 1
    test_pass "$1" "$2" testlog.json --print-errorlogs --num-processes 2
}

summarize() {
    python3 - "$manifest" <<'PY'
"""Prints every test's libcheck summary per pass and the closing 'N passed, N failed' line.

A test whose output has libcheck summary lines counts Checks-Failures-Errors passed and
Failures+Errors failed (a test that still failed, e.g. valgrind errors after the summary, adds
one failure). Any other test counts 1 passed or 1 failed by its result; SKIP counts neither.
A failed build, or a meson test run that failed without logging a failing test, counts 1 failed.
"""
import json
import re
import sys

SUMMARY = re.compile(r"^\d+%: Checks: (\d+), Failures: (\d+), Errors: (\d+)\s*$", re.M)
# Python unittest (the integration tests): "Ran N tests" then "OK" or "FAILED (failures=F, ...)".
RAN = re.compile(r"^Ran (\d+) tests? in .*$", re.M)
UNITTEST_END = re.compile(r"^(?:OK|FAILED) \((.*)\)\s*$", re.M)
GOOD = {"OK", "EXPECTEDFAIL"}

passed = failed = skipped = 0
with open(sys.argv[1]) as f:
    passes = [line.rstrip("\n").split("\t") for line in f if line.strip()]

print("\n=== summary")
for label, path, status in passes:
    if status == "build-failed":
        print(f"[{label}] BUILD FAILED")
        failed += 1
        continue
    records = []
    if path != "-":
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        print(f"[{label}] unreadable line in {path}")
    pass_failed = 0
    for r in records:
        name, result = r.get("name", "?").split(" / ")[-1], r.get("result", "?")
        out = (r.get("stdout") or "") + "\n" + (r.get("stderr") or "")
        sums = [tuple(map(int, m.groups())) for m in SUMMARY.finditer(out)]
        if sums:
            for m in SUMMARY.finditer(out):
                print(f"[{label}] {name}: {m.group(0).strip()}")
            bad = sum(fl + er for _, fl, er in sums)
            good = sum(ch for ch, _, _ in sums) - bad
            if result not in GOOD and bad == 0:
                print(f"[{label}] {name}: {result} (exit {r.get('returncode')})"
                      " although libcheck reported no failure")
                bad = 1
            passed += good
            failed += bad
            pass_failed += bad
        elif RAN.search(out):
            ran = int(RAN.search(out).group(1))
            end = UNITTEST_END.search(out)
            counts = dict(kv.split("=") for kv in end.group(1).split(", ")) if end else {}
            bad = int(counts.get("failures", 0)) + int(counts.get("errors", 0))
            skip = int(counts.get("skipped", 0))
            if result not in GOOD and bad == 0:
                bad = 1
            print(f"[{label}] {name}: Ran {ran} tests, {bad} failed, {skip} skipped ({result})")
            passed += ran - bad - skip
            failed += bad
            skipped += skip
            pass_failed += bad
        elif result == "SKIP":
            print(f"[{label}] {name}: SKIP")
            skipped += 1
        elif result in GOOD:
            print(f"[{label}] {name}: {result}")
            passed += 1
        else:
            print(f"[{label}] {name}: {result} (exit {r.get('returncode')}, no libcheck summary)")
            failed += 1
            pass_failed += 1
    if not records:
        print(f"[{label}] no test results logged (meson test exit {status})")
    if status != "0" and pass_failed == 0:
        print(f"[{label}] meson test exited {status} without a logged failing test")
        failed += 1
if passed + failed == 0:
    print("no test ran")
    failed += 1
if skipped:
    print(f"({skipped} skipped)")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
}

cmd_deps() { install_deps "${deps_packages[@]}" "${scaleout_packages[@]}"; }

cmd_test() {
    cmd_deps
    local tmpdir
    tmpdir=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: tmpdir is local
    trap "rm -rf '$tmpdir'" EXIT
    manifest="$tmpdir/manifest"
    : >"$manifest"

    local common=(--werror -Dbuildtype=debugoptimized) plain_ok=1
    build_pass plain build-ci-plain "${common[@]}" || plain_ok=0
    build_pass asan build-ci-asan "${common[@]}" -Db_sanitize=address,undefined \
        -Db_lundef=false || true
    if [[ $plain_ok -eq 1 ]]; then
        # bench/soak for 60 s, alone on the machine: its health answers must come within 50 ms.
        test_pass soak build-ci-plain testlog-soak.json --benchmark --suite soak \
            --logbase testlog-soak --verbose
        # rx-http behind HAProxy on a network of namespaces, under wrk's load (about a minute);
        # SKIP where no namespace can be made.
        test_pass scaleout build-ci-plain testlog-scaleout.json --benchmark --suite scaleout \
            --logbase testlog-scaleout --verbose
        test_pass valgrind build-ci-plain testlog-valgrind.json --setup valgrind --suite unit \
            --print-errorlogs --num-processes 2
        # The integration tests with every app server under valgrind (tests/appserver.py).
        RX_TEST_VALGRIND=1 test_pass valgrind-apps build-ci-plain testlog-valgrind-apps.json \
            --suite http --suite echo --suite proxy --suite workers \
            --logbase testlog-valgrind-apps \
            --print-errorlogs
    else
        echo "[soak, scaleout, valgrind] skipped: the plain build failed" >&2
    fi
    # ThreadSanitizer: the unit suites (the group, threads and work suites among them) and the
    # integration tests, every app server running 4 loops (RX_TEST_THREADS adds --threads 4) and
    # every rx-http serving files through a pool of 2 threads (RX_TEST_IO_THREADS); 300 fault
    # schedules instead of 1,000 (the plain and ASan passes run them all).
    # halt_on_error makes any report end its process with status 66: the libcheck test (or the
    # integration test, which also scans the server's stderr for reports) fails.
    if build_dir tsan build-ci-tsan "${common[@]}" -Db_sanitize=thread -Db_lundef=false; then
        RX_FAULT_SEEDS=300 RX_TEST_THREADS=4 RX_TEST_IO_THREADS=2 TSAN_OPTIONS='halt_on_error=1 exitcode=66 second_deadlock_stack=1' \
            test_pass tsan build-ci-tsan testlog.json --suite unit --suite integration \
            --print-errorlogs --num-processes 2
    fi
    # The libFuzzer targets (clang): each seed corpus, then a 15 s campaign per target (the long
    # campaigns are run apart: docs/robustness.md).
    CC=clang build_pass fuzz build-ci-fuzz --werror -Dbuildtype=debugoptimized -Dfuzz=true \
        -Dtests=false -Dbench=false -Dfuzz_seconds=15 || true
    summarize
}

# --- main ---------------------------------------------------------------------------------

sub=${1:-}
if [[ $# -gt 0 ]]; then
    shift
fi
case $sub in
    deps) cmd_deps ;;
    run) cmd_run "$@" ;;
    test) cmd_test ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
