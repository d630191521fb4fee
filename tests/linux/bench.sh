#!/usr/bin/env bash
# fio from the stock Linux NVMe/TCP host (see src/bin/linux-bench.rs):
#   tests/linux/bench.sh nvmet [--write-docs] [--runtime SECS] ...
#   tests/linux/bench.sh compare [--write-docs] [--runtime SECS] ...   (tandem vs nvmet-tcp)
#   tests/linux/bench.sh external --address A --port P --subnqn NQN --netns NS ...
# The native load generator (`cargo tandem bench nvme`) from this machine
# against tandem and nvmet-tcp side by side, then the HA pair (see
# src/bin/nvme-bench.rs; about 12 minutes):
#   tests/linux/bench.sh native [--write-docs] [--runtime SECS] [--skip pair,scaling,sweep] ...
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/linux}"
if [ "${1:-}" = native ]; then
    shift
    exec cargo run -q --release -j 2 -p tandem-linux-guest --bin nvme-bench -- compare "$@"
fi
exec cargo run -q --release -j 2 -p tandem-linux-guest --bin linux-bench -- "$@"
