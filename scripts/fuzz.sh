#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and prints what each reached.
#
# Targets (fuzz/fuzz_targets/, checks in src/fuzzing.rs): command (the SMTP command parser),
# data_decoder (DATA/BDAT decoding against a reference decoder), rules_parse (.cf rule files),
# message_scan (Message::parse + Engine::scan with the shipped rules/), milter_stream (an MTA's
# milter packets through the real milter session).
#
# Usage: scripts/fuzz.sh [SECONDS]      seconds per target, default 60 (or FUZZ_SECONDS); 0 skips
# Environment:
#   FUZZ_TOOLCHAIN=nightly|stable  default: nightly when `rustup toolchain list` has one, else
#                                  stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags)
#   FUZZ_SANITIZER=none|address    default none: the ASan build of the whole dependency tree
#                                  takes too long for the test run, and the code is safe Rust;
#                                  use address for long runs by hand
#   FUZZ_TARGETS="command ..."     a subset of the targets
# Installs cargo-fuzz (pinned, --locked) when `cargo fuzz` is missing. Works from any directory.
#
# Each target's corpus grows in fuzz/target/corpus/<target> (not committed), seeded from
# fuzz/corpus/<target> (committed, small) and fuzz/regressions/<target>. A crash, timeout or
# out-of-memory input is kept in fuzz/artifacts/<target>/ (not committed) and the script fails;
# once fixed, copy the input to fuzz/regressions/<target>/ so tests/fuzz_regressions.rs replays
# it in every `cargo test`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-${FUZZ_SECONDS:-60}}"
case "$seconds" in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS]" >&2
    exit 2
    ;;
esac
if [ "$seconds" = 0 ]; then
    echo "==> fuzzing skipped (0 seconds)"
    exit 0
fi
read -r -a targets <<<"${FUZZ_TARGETS:-command data_decoder rules_parse message_scan milter_stream}"
sanitizer="${FUZZ_SANITIZER:-none}"
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --version $cargo_fuzz_version --locked (cargo fuzz is missing)"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

toolchain="${FUZZ_TOOLCHAIN:-}"
if [ -z "$toolchain" ]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        toolchain=nightly
    else
        toolchain=stable
    fi
fi
if [[ "$toolchain" != nightly* ]]; then
    # cargo-fuzz passes -Z options (sanitizer coverage); RUSTC_BOOTSTRAP lets stable take them.
    export RUSTC_BOOTSTRAP=1
    echo "==> no nightly toolchain used: building with $toolchain and RUSTC_BOOTSTRAP=1"
fi

echo "==> cargo +$toolchain fuzz build --sanitizer $sanitizer ($(cargo "+$toolchain" --version))"
build_start=$SECONDS
# With no target named, `cargo fuzz build` builds them all; it takes at most one name.
build_args=()
[ "${#targets[@]}" -eq 4 ] || build_args=("${targets[@]}")
for t in "${build_args[@]:-}"; do
    if ! cargo "+$toolchain" fuzz build --sanitizer "$sanitizer" ${t:+"$t"} 2>&1 |
        { grep -v '^ *Compiling ' || true; }; then
        echo "error: cargo fuzz build failed" >&2
        exit 1
    fi
done
echo "    built in $((SECONDS - build_start)) s"

triple=$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')
bin_dir="fuzz/target/$triple/release"

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
failed=()
rows=()
for t in "${targets[@]}"; do
    corpus="fuzz/target/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t" "fuzz/regressions/$t"
    echo "==> fuzzing $t for ${seconds} s"
    status=0
    # The shipped rule files and the test messages seed their targets where they live (no
    # copies to drift apart).
    extra=()
    case "$t" in
        rules_parse) extra=(rules) ;;
        message_scan) extra=(tests/data) ;;
    esac
    "$bin_dir/$t" "$corpus" "fuzz/corpus/$t" "fuzz/regressions/$t" "${extra[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        >"$log_dir/$t.log" 2>&1 || status=$?
    # The last status line: "#N DONE cov: C ft: F corp: ..." (or the last before a crash).
    last=$(grep -E '^#[0-9]+' "$log_dir/$t.log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_dir/$t.log" | tail -n 1)
    [ -n "$execs" ] || execs=$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$last")
    cov=$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    rate=$(sed -E -n 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
    if [ "$status" = 0 ]; then
        result=ok
    else
        result="FAILED (exit $status)"
        failed+=("$t")
        echo "---- $t: libFuzzer output (last 40 lines) ----"
        tail -n 40 "$log_dir/$t.log"
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log_dir/$t.log" | tail -n 1)
        echo "----"
        echo "$t found an input that fails: ${artifact:-see fuzz/artifacts/$t/}"
        echo "  reproduce: $bin_dir/$t ${artifact:-fuzz/artifacts/$t/<file>}"
        echo "  after the fix in src/, keep it as a regression test:"
        echo "    cp ${artifact:-fuzz/artifacts/$t/<file>} fuzz/regressions/$t/<what-it-is>"
        echo "    cargo test --test fuzz_regressions"
    fi
    rows+=("$(printf '%-14s %12s %8s %8s %9s  %s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${rate:-?}" "$result")")
done

echo "==> fuzzing summary (${seconds} s per target, sanitizer $sanitizer, $toolchain)"
printf '%-14s %12s %8s %8s %9s  %s\n' target executions cov ft exec/s result
printf '%s\n' "${rows[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
