#!/usr/bin/env bash
# fio from the stock Linux NVMe/TCP host (see src/bin/linux-bench.rs):
#   tests/linux/bench.sh nvmet [--write-docs] [--runtime SECS] ...
#   tests/linux/bench.sh compare [--write-docs] [--runtime SECS] ...   (tandem vs nvmet-tcp)
#   tests/linux/bench.sh external --address A --port P --subnqn NQN --netns NS ...
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/linux}"
exec cargo run -q --release -j 2 -p tandem-linux-guest --bin linux-bench -- "$@"
