#!/usr/bin/env bash
# Builds the workspace in release mode and runs one kh-bench section with
# enough file descriptors: 5,000 simulated agents need ~5,000 sockets in
# kh-bench and as many in the kh-coordinator it starts (which inherits the
# limit). Usage: bench/run.sh rollout|upgrade|scale|agent|snapshot [flags]
set -euo pipefail
cd "$(dirname "$0")/.."
want=20000
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
    ulimit -n "$want" || {
        echo "cannot raise RLIMIT_NOFILE to $want (hard limit $(ulimit -Hn)); raise the hard limit first" >&2
        exit 1
    }
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
cargo build --release --workspace
exec "$CARGO_TARGET_DIR/release/kh-bench" "$@"
