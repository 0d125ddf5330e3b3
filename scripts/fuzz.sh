#!/usr/bin/env bash
# Fuzzes every decoder of peer-controlled bytes (see fuzz/fuzz_targets/) for
# a bounded time per target. Not part of CI: run it by hand, e.g.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh     # longer
#   scripts/fuzz.sh frame token          # only these targets
#
# Installs cargo-fuzz if it is missing. cargo-fuzz needs nightly -Z flags;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Corpora grow in
# fuzz/corpus/<target>/ and crashing inputs land in fuzz/artifacts/<target>/
# (both ignored by git); reproduce one with
#
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
#
# Exits non-zero if any target crashed; every target runs regardless.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-60}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(frame token close_reason)
fi

# Seeds: whole, valid inputs that random mutation would take long to find.
# They live in the corpus directories, which git ignores.
seed() { # seed TARGET NAME BYTES...
    local dir="fuzz/corpus/$1" name="$2"
    shift 2
    mkdir -p "$dir"
    printf "$@" >"$dir/seed-$name"
}
frame_seed() { # frame_seed NAME JSON TRAILING: length prefix, JSON, bytes after
    local n=${#2}
    seed frame "$1" "\\x$(printf %02x $((n >> 8)))\\x$(printf %02x $((n & 255)))%s%b" "$2" "$3"
}
frame_seed hello '{"type":"hello","version":1,"role":"client","token":"a.b.c","host":"lab1"}' ''
frame_seed welcome '{"type":"welcome","host":"lab1","role":"host","expires_at":42}' 'x'
frame_seed open '{"type":"open","session":7,"client":"127.0.0.1:5"}' 'SSH-2.0-x\r\n'
frame_seed ready '{"type":"ready","session":7}' 'SSH-2.0-x\r\n'
frame_seed refused '{"type":"refused","reason":"host_offline","message":"host lab1 is not connected"}' ''
seed frame body '{"type":"open","session":0}'
seed token jwt 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsYWIxIn0.c2lnbmF0dXJl'
seed token none 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJsYWIxIn0.'
seed token real '\x01\x00\x00' # odd first byte: the target's real token, unchanged
seed close_reason host-offline '\x04\x00\x00\x00\x00\x00\x00\x00host lab1 is not connected'
seed close_reason empty '\x02\x00\x00\x00\x00\x00\x00\x00'

failed=()
for target in "${targets[@]}"; do
    echo "==> fuzzing $target for ${seconds}s"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
        -max_total_time="$seconds" -max_len=20000; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crash or failure in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crash in ${targets[*]} (${seconds}s each)"
