#!/usr/bin/env bash
# Terminal 2 of 3: the host agent, next to sshd (behind NAT in real life).
#
# Registers with the relay using certs/host.token and connects every session
# to the local sshd on 127.0.0.1:22. Start examples/shell/shellrelay.sh first:
# it writes the token and the relay's certificate.
#
# Next: run examples/shell/shellclient.sh in terminal 3.
#
# Environment:
#   SHELLRELAY        command to run (default: cargo run --release --quiet --)
#   SHELLRELAY_RELAY  the relay's address (default 127.0.0.1:4433)
set -euo pipefail
cd "$(dirname "$0")/../.."

read -r -a shellrelay <<<"${SHELLRELAY:-cargo run --release --quiet --}"
relay="${SHELLRELAY_RELAY:-127.0.0.1:4433}"

for f in certs/relay.crt certs/host.token; do
    if [[ ! -f $f ]]; then
        echo "$f is missing: start examples/shell/shellrelay.sh first" >&2
        exit 1
    fi
done

echo "registering with the relay at $relay; next: examples/shell/shellclient.sh"
exec "${shellrelay[@]}" host --relay "$relay" --relay-cert certs/relay.crt \
    --token-file certs/host.token --target 127.0.0.1:22
