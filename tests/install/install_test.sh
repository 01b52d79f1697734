#!/usr/bin/env bash
# Install test: builds rx from the source tree into a temporary prefix, installs it, then builds
# and runs tests/install/demo.c three ways (and the embedding examples tiny_echo.c and
# tiny_resolve.c the same ways):
#   1. plain cc with the flags from the installed rx.pc (pkg-config --cflags --libs rx);
#   2. the Meson project tests/install/outside/ against the installed rx.pc (no subprojects/);
#   3. the same project with rx as a Meson subproject (subprojects/rx -> the source tree).
# Every program must print "timer ran, task ran" and exit 0.
# Usage: install_test.sh SOURCE_ROOT [BUILD_ROOT]   (BUILD_ROOT is unused; kept for meson test)
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 SOURCE_ROOT [BUILD_ROOT]" >&2
    exit 2
fi
src=$(cd "$1" && pwd -P)
here="$src/tests/install"
meson=${MESON:-meson}
cc=${CC:-cc}
expected="timer ran, task ran"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rx-install.XXXXXX")
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

# Meson test runs us with sanitizer/perturbation variables meant for the test binaries; the
# nested builds here are plain ones, so keep those out of them.
unset ASAN_OPTIONS UBSAN_OPTIONS MSAN_OPTIONS LSAN_OPTIONS MALLOC_PERTURB_ CFLAGS LDFLAGS || true

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# Runs a built demo (with a time bound) and checks its exit code and output.
check_demo() {
    local what=$1
    shift
    local out rc=0
    out=$(timeout 20 "$@" 2>&1) || rc=$?
    printf '%s: %s\n' "$what" "$out"
    [[ $rc -eq 0 ]] || fail "$what exited with status $rc"
    [[ $out == "$expected" ]] || fail "$what printed '$out', expected '$expected'"
}

# Runs an example server (tiny_echo or tiny_resolve) on an ephemeral port, sends it one message
# and checks the answer, then stops it with SIGTERM. A message ending in a newline is a request
# whose one-line answer is read; any other is echoed, and the client half-closes to end it.
check_server() {
    local what=$1 send=$2 expect=$3
    shift 3
    local out pid port reply
    out=$(mktemp "$tmp/server.XXXXXX") # fresh per run: never read an earlier run's port
    "$@" 127.0.0.1:0 >"$out" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$out")
        [[ -n $port ]] && break
        sleep 0.1
    done
    if [[ -z $port ]]; then
        kill "$pid" 2>/dev/null || true
        fail "$what did not start: $(cat "$out")"
    fi
    reply=$(python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
msg = sys.argv[2].encode()
s.sendall(msg)
line = msg.endswith(b"\n")
if not line:
    s.shutdown(socket.SHUT_WR)
data = b""
while not (line and data.endswith(b"\n")):
    b = s.recv(4096)
    if not b:
        break
    data += b
print(data.decode().rstrip("\n"))' "$port" "$send") || { kill "$pid"; fail "$what: client failed"; }
    kill -TERM "$pid"
    wait "$pid" || fail "$what exited with status $? after SIGTERM"
    [[ $reply == "$expect" ]] || fail "$what answered '$reply', expected '$expect'"
    printf '%s: answered "%s"\n' "$what" "$reply"
}

# The two embedding examples of docs/embedding.md, built as prefix-NAME in dir.
check_examples() {
    local how=$1 dir=$2 prefix=$3
    check_server "tiny_echo, $how" "hello rx" "hello rx" "$dir/${prefix}tiny_echo"
    # A numeric name: getaddrinfo still runs on the pool, but needs no /etc/hosts (a fresh root
    # may have none) and no resolver.
    check_server "tiny_resolve, $how" $'127.0.0.1\n' "127.0.0.1 127.0.0.1" \
        "$dir/${prefix}tiny_resolve"
}

# Runs a command quietly; shows its output only if it fails.
quiet() {
    local log="$tmp/last.log"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        fail "command failed: $*"
    fi
}

step "configure, build and install rx into $tmp/prefix"
quiet "$meson" setup "$tmp/build" "$src" --prefix="$tmp/prefix" --wrap-mode=nodownload \
    -Dtests=false -Dapps=false -Dbench=false -Db_sanitize=none
quiet "$meson" compile -C "$tmp/build"
quiet "$meson" install -C "$tmp/build"

pc=$(find "$tmp/prefix" -name rx.pc -path '*/pkgconfig/*' | head -n 1)
[[ -n $pc ]] || fail "no rx.pc was installed under $tmp/prefix"
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$pc")
libdir=$(pkg-config --variable=libdir rx)
[[ -e $libdir/librx.so ]] || fail "librx.so is not in the installed libdir $libdir"
[[ -f $(pkg-config --variable=includedir rx)/rx/rx.h ]] || fail "rx/rx.h was not installed"

step "cc demo.c against the installed rx.pc"
# shellcheck disable=SC2046 # pkg-config output is meant to be split into words
"$cc" -std=c11 -Wall -Wextra -Werror -o "$tmp/demo-cc" "$here/demo.c" \
    $(pkg-config --cflags --libs rx)
deps=$(LD_LIBRARY_PATH=$libdir ldd "$tmp/demo-cc")
[[ $deps == *"$libdir/librx.so"* ]] || fail "demo-cc does not load librx.so from $libdir: $deps"
LD_LIBRARY_PATH=$libdir check_demo "cc + pkg-config" "$tmp/demo-cc"
for prog in tiny_echo tiny_resolve; do
    # shellcheck disable=SC2046 # as above
    "$cc" -std=c11 -Wall -Wextra -Werror -o "$tmp/cc-$prog" "$here/$prog.c" \
        $(pkg-config --cflags --libs rx)
done
LD_LIBRARY_PATH=$libdir check_examples "cc + pkg-config" "$tmp" cc-

# The outside project, copied twice: once without subprojects/ (rx from rx.pc), once with
# subprojects/rx linking to the source tree (rx through meson.override_dependency).
for mode in pkg-config subproject; do
    step "outside Meson project, rx from $mode"
    proj="$tmp/outside-$mode"
    mkdir -p "$proj"
    cp "$here/outside/meson.build" "$here/outside/meson_options.txt" "$here/demo.c" \
        "$here/tiny_echo.c" "$here/tiny_resolve.c" "$proj/"
    opts=(--wrap-mode=nodownload "-Drx_from=$mode")
    if [[ $mode == subproject ]]; then
        mkdir -p "$proj/subprojects"
        ln -s "$src" "$proj/subprojects/rx"
        opts+=(-Drx:tests=false -Drx:apps=false -Drx:bench=false)
        # Nothing but the subproject may provide rx here.
        env_pc=""
    else
        env_pc=$PKG_CONFIG_PATH
    fi
    PKG_CONFIG_PATH=$env_pc quiet "$meson" setup "$proj/build" "$proj" "${opts[@]}"
    quiet "$meson" compile -C "$proj/build"
    if [[ $mode == subproject ]]; then
        # The subproject links rx statically: no librx.so may be needed at run time.
        deps=$(ldd "$proj/build/demo")
        [[ $deps != *librx.so* ]] || fail "subproject demo links librx.so: $deps"
        check_demo "meson subproject" "$proj/build/demo"
        check_examples "meson subproject" "$proj/build" ""
    else
        LD_LIBRARY_PATH=$libdir check_demo "meson + rx.pc" "$proj/build/demo"
        LD_LIBRARY_PATH=$libdir check_examples "meson + rx.pc" "$proj/build" ""
    fi
done

step "install test passed"
