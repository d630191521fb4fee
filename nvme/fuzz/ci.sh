#!/usr/bin/env bash
# Runs every cargo-fuzz target of tandem-nvme for a bounded time (CI step).
#
#   nvme/fuzz/ci.sh            # each target TANDEM_FUZZ_SECONDS (default 30) s
#   TANDEM_FUZZ_SECONDS=0 ...  # skip
#
# Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz
# (`cargo install cargo-fuzz --locked`) when it is missing, and prints a
# SKIPPED line when either cannot be had. The committed corpus in corpus/
# seeds each run but is never written to: new inputs go to a temporary
# directory, so a CI run leaves the tree clean. A crash fails the step and
# names the input that reproduces it (kept in artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${TANDEM_FUZZ_SECONDS:-30}
skip() {
    echo "!!! SKIPPED fuzzing (nvme/fuzz): $*" >&2
    exit 0
}
[ "$seconds" -gt 0 ] 2>/dev/null || skip "TANDEM_FUZZ_SECONDS=$seconds"
cargo +nightly --version >/dev/null 2>&1 || skip "\`cargo +nightly\` does not run (rustup toolchain install nightly)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "nvme/fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2 || skip "cargo-fuzz is missing and could not be installed"
fi

targets=$(cargo +nightly fuzz list)
[ -n "$targets" ] || { echo "nvme/fuzz: no fuzz targets found" >&2; exit 1; }
# One build for all targets (the runs below reuse it); few jobs on a small
# shared machine.
export CARGO_BUILD_JOBS=${TANDEM_FUZZ_JOBS:-2}
cargo +nightly fuzz build >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in $targets; do
    mkdir -p "$work/$target" "artifacts/$target"
    touch "$work/$target.start"
    seeds=()
    [ -d "corpus/$target" ] && seeds=("corpus/$target")
    echo "nvme/fuzz: $target for ${seconds} s (seeds: ${seeds[*]:-none})" >&2
    # -timeout: one input taking over 10 s is a hang; -rss_limit_mb bounds memory.
    if ! cargo +nightly fuzz run "$target" "$work/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$work/$target.log" 2>&1; then
        tail -n 40 "$work/$target.log" >&2
        echo "nvme/fuzz: $target FAILED; reproduce with:" >&2
        find "artifacts/$target" -type f -newer "$work/$target.start" | while read -r artifact; do
            echo "  cd nvme/fuzz && cargo +nightly fuzz run $target $artifact" >&2
        done
        failed+=("$target")
        continue
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)
    found=$(find "$work/$target" -type f | wc -l)
    echo "nvme/fuzz: $target ok: ${runs:-?} inputs run, $found new corpus entries (not kept)" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "nvme/fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "nvme/fuzz: all targets ran ${seconds} s without a crash" >&2
