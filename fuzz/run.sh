#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each and prints, per target, the runs executed,
# the seconds taken and the crashes found. Works on a fresh machine with only stable
# Rust: installs cargo-fuzz if missing and builds with AddressSanitizer on stable.
#
# Usage: fuzz/run.sh SECONDS [TARGET...]   (default: every target)
#        FUZZ_SANITIZER=none fuzz/run.sh SECONDS   (no sanitizer: faster, fewer checks)
# Exit status: 0 when no target crashed, 1 when one did, 2 on a usage or build error.
# Crashing inputs land in fuzz/artifacts/TARGET/; each belongs in
# tests/fuzz_regressions.rs.
set -euo pipefail

usage() {
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
}
[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
seconds=$1
shift

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(response config key)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Stable Rust, as a fresh machine has no nightly: RUSTC_BOOTSTRAP=1 lets it take the
# -Z flags cargo-fuzz passes (-Zsanitizer), and stable ships the sanitizer runtimes.
# AddressSanitizer by default (unsafe-libyaml and httparse hold unsafe code);
# FUZZ_SANITIZER=none runs about twice as fast, in a target dir of its own so that
# switching does not rebuild the other.
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
build=(--sanitizer "$sanitizer")
[[ $sanitizer == address ]] || build+=(--target-dir "$fuzz_dir/target/$sanitizer")
echo "building with $(rustc --version), ${build[*]}" >&2

cargo fuzz build "${build[@]}" >&2 || exit 2

status=0
printf '%-10s %12s %8s %10s %8s\n' target runs seconds runs/s crashes
for target in "${targets[@]}"; do
    # New inputs go to a working corpus outside git; the committed seeds are only read.
    work="$fuzz_dir/target/corpus/$target"
    artifacts="$fuzz_dir/artifacts/$target"
    mkdir -p "$work" "$artifacts"
    log="$fuzz_dir/target/fuzz-$target.log"
    marker="$fuzz_dir/target/.started-$target"
    touch "$marker"
    start=$(date +%s)
    # -fork keeps fuzzing past a crash, so one run finds every crash it can;
    # -ignore_crashes makes the forked jobs go on after one.
    set +e
    cargo fuzz run "${build[@]}" "$target" "$work" "$fuzz_dir/corpus/$target" -- \
        -max_total_time="$seconds" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
    crashes=$(find "$artifacts" -type f -newer "$marker" | wc -l)
    # The fork-mode parent reports the runs of all its jobs as `#RUNS: cov: ...`.
    runs=$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "$log" | tail -1)
    runs=${runs:-0}
    printf '%-10s %12d %8d %10d %8d\n' "$target" "$runs" "$elapsed" $((runs / (elapsed > 0 ? elapsed : 1))) "$crashes"
    if [[ $crashes -gt 0 ]]; then
        status=1
        find "$artifacts" -type f -newer "$marker" | sed "s|^|$target: crash: |" >&2
    elif [[ $rc -ne 0 ]]; then
        echo "$target: cargo fuzz exited $rc; see $log" >&2
        status=1
    fi
done
exit $status
