#!/usr/bin/env bash
# Run the Rust tests that touch tensor memory (checkpoint copies, writes, memory-mapped reads and
# checksums; gradient-norm and clip kernels, SIMD included; DLPack descriptions; event files)
# under valgrind's memcheck: any invalid read or write, or use of uninitialised memory, fails the
# run. (Miri would need a nightly toolchain with the miri component; valgrind works on the stable
# build.) The proptest and fuzz cases are skipped here: they run, many times over, in plain
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    echo "memcheck: valgrind is not installed (apt-get install valgrind); skipped" >&2
    exit 0
fi
bin=$(cargo test -p ferrotrain-core --lib --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
valgrind -q --error-exitcode=99 "$bin" --test-threads=2 checkpoint::tests:: clip::tests:: dlpack::tests:: tfevents:: \
    --skip any_layout --skip mutated --skip a_single --skip long_f32_norms
