#!/usr/bin/env bash
# Runs every cargo-fuzz target of tandem-nvme for a bounded time: the
# nvme/fuzz part of scripts/fuzz (which runs every fuzz workspace and says
# how; TANDEM_FUZZ_SECONDS, default 30).
exec "$(dirname "$0")/../../scripts/fuzz" nvme/fuzz
