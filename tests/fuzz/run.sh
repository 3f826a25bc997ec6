#!/usr/bin/env bash
# Bounded fuzzing of the gateway's parsers and validators.
#
#   tests/fuzz/run.sh [SECONDS]    every target for SECONDS (default 10), then fail on any crash
#   tests/fuzz/run.sh stable       only the stable fallback (replay + property tests)
#   tests/fuzz/run.sh seeds        rewrite the corpus seed files from tests/src/fuzz/seeds.rs
#
# With a nightly toolchain, cargo-fuzz (pinned; installed into $PORTCULLIS_TEST_DEPS/cargo
# when missing) builds every target once into tests/fuzz/target and runs each for SECONDS,
# starting from the committed corpus (tests/fuzz/corpus/<target>/, read only; what the run
# learns goes to tests/fuzz/target/corpus/). An input that crashes, hangs or runs out of
# memory is copied to tests/fuzz/regressions/<target>/ and the script fails: fix the bug and
# commit the file, which the stable tests then replay on every run.
#
# Without a nightly toolchain it says so and runs the stable fallback instead: every
# committed corpus and regression input and bounded property tests, through the same
# target functions (`cargo test -p portcullis-tests --test e2e -- fuzz_regressions::`).
#
# Environment: PORTCULLIS_FUZZ_TOOLCHAIN (default nightly), PORTCULLIS_FUZZ_SANITIZER
# (default none; address for ASan), PORTCULLIS_TEST_DEPS (default tests/.deps).
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TESTS_DIR="$(cd "$FUZZ_DIR/.." && pwd)"
REPO_ROOT="$(cd "$TESTS_DIR/.." && pwd)"
DEPS_DIR="${PORTCULLIS_TEST_DEPS:-$TESTS_DIR/.deps}"
TOOLCHAIN="${PORTCULLIS_FUZZ_TOOLCHAIN:-nightly}"
SANITIZER="${PORTCULLIS_FUZZ_SANITIZER:-none}"
CARGO_FUZZ_VERSION="0.13.2"
# Nightly builds with instrumentation: never mixed with the workspace's stable target/.
FUZZ_TARGET_DIR="$FUZZ_DIR/target"

log() { printf '\n==> %s\n' "$*"; }
fail() { printf 'tests/fuzz/run.sh: %s\n' "$*" >&2; exit 1; }

# The targets, as cargo-fuzz lists them (one fuzz_targets/<name>.rs each).
targets() {
    local file
    for file in "$FUZZ_DIR"/fuzz_targets/*.rs; do
        basename "$file" .rs
    done
}

stable_fallback() {
    log "stable fallback: committed corpus and regressions, seeds, property tests"
    (cd "$REPO_ROOT" && cargo test -p portcullis-tests --test e2e -- fuzz_regressions::)
}

has_nightly() {
    command -v rustup >/dev/null 2>&1 && cargo "+$TOOLCHAIN" --version >/dev/null 2>&1
}

# cargo-fuzz at the pinned version: the one on PATH if it is that version, else the one in
# the deps folder, installed there (with the stable toolchain) when missing.
ensure_cargo_fuzz() {
    local installed="$DEPS_DIR/cargo/bin/cargo-fuzz"
    if command -v cargo-fuzz >/dev/null 2>&1 &&
        [[ "$(cargo-fuzz --version 2>/dev/null)" == "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
        return
    fi
    if ! [[ -x "$installed" && "$("$installed" --version 2>/dev/null)" == "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
        log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $DEPS_DIR/cargo"
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$DEPS_DIR/cargo" \
            || fail "cannot install cargo-fuzz $CARGO_FUZZ_VERSION"
    fi
    export PATH="$DEPS_DIR/cargo/bin:$PATH"
}

cargo_fuzz() {
    local command="$1"
    shift
    # The fuzz workspace resolves the workspace's own versions: its lock file starts as a
    # copy of the root one (and is not committed).
    cp "$REPO_ROOT/Cargo.lock" "$FUZZ_DIR/Cargo.lock"
    (cd "$REPO_ROOT" && CARGO_TARGET_DIR="$FUZZ_TARGET_DIR" cargo "+$TOOLCHAIN" fuzz "$command" --fuzz-dir tests/fuzz \
        --sanitizer "$SANITIZER" --debug-assertions --codegen-units 16 "$@")
}

fuzz_all() {
    local seconds="$1" target failed=()
    ensure_cargo_fuzz
    local started=$SECONDS
    log "building the fuzz targets ($(cargo "+$TOOLCHAIN" --version), sanitizer $SANITIZER)"
    cargo_fuzz build
    printf 'built in %ds\n' $((SECONDS - started))
    # Built once; each target's binary then runs directly (`cargo fuzz run` would check
    # the build again before every target).
    local host
    host="$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')"
    local bin_dir="$FUZZ_TARGET_DIR/$host/release"
    for target in $(targets); do
        local scratch="$FUZZ_TARGET_DIR/corpus/$target"
        local artifacts="$FUZZ_TARGET_DIR/artifacts/$target"
        local run_log="$FUZZ_TARGET_DIR/artifacts/$target.log"
        local regressions="$FUZZ_DIR/regressions/$target"
        mkdir -p "$scratch" "$artifacts" "$FUZZ_DIR/corpus/$target"
        rm -f "$artifacts"/*
        log "fuzzing $target for ${seconds}s"
        local status=0
        # The committed corpus comes second: libFuzzer writes what it learns to the first
        # folder only. -timeout: a single input running 10 s is a hang.
        "$bin_dir/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$artifacts/" -print_final_stats=1 \
            "$scratch" "$FUZZ_DIR/corpus/$target" 2>"$run_log" || status=$?
        grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added)' \
            "$run_log" || true
        local found=("$artifacts"/*)
        if ((status != 0)) || [[ -e "${found[0]}" ]]; then
            tail -n 40 "$run_log" >&2
            mkdir -p "$regressions"
            local input
            for input in "${found[@]}"; do
                [[ -e "$input" ]] || continue
                cp "$input" "$regressions/"
                printf 'kept %s\n' "${regressions#"$REPO_ROOT"/}/$(basename "$input")" >&2
            done
            failed+=("$target")
        fi
    done
    printf 'fuzzing took %ds (build included)\n' $((SECONDS - started))
    if ((${#failed[@]} > 0)); then
        fail "crashes in: ${failed[*]} (inputs kept in tests/fuzz/regressions/; reproduce with
  cargo +$TOOLCHAIN fuzz run --fuzz-dir tests/fuzz <target> <input>, or on stable with
  cargo test -p portcullis-tests --test e2e -- fuzz_regressions::every_committed)"
    fi
}

command="${1:-10}"
case "$command" in
    stable) stable_fallback ;;
    seeds)
        (cd "$REPO_ROOT" && PORTCULLIS_FUZZ_WRITE_SEEDS=1 \
            cargo test -p portcullis-tests --test e2e -- fuzz_regressions::seeds_pass_their_targets --exact)
        ;;
    -h | --help | help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *)
        [[ "$command" =~ ^[0-9]+$ ]] || fail "unknown command '$command' (SECONDS, stable or seeds)"
        if has_nightly; then
            fuzz_all "$command"
        else
            echo "no '$TOOLCHAIN' toolchain (rustup toolchain list): cargo fuzz cannot run here;" \
                "running the stable fallback instead"
            stable_fallback
        fi
        ;;
esac
