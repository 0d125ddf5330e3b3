#!/usr/bin/env bash
# Terminal 3 of 3: the client forwarder.
#
# Listens on 127.0.0.1:2222 and carries every ssh connection made to it
# through the relay to the host agent. Start examples/shell/shellrelay.sh and
# examples/shell/shellhost.sh first.
#
# Next: in a fourth terminal, run the ssh command this script prints.
#
# Environment:
#   SHELLRELAY        command to run (default: cargo run --release --quiet --)
#   SHELLRELAY_RELAY  the relay's address (default 127.0.0.1:4433)
set -euo pipefail
cd "$(dirname "$0")/../.."

read -r -a shellrelay <<<"${SHELLRELAY:-cargo run --release --quiet --}"
relay="${SHELLRELAY_RELAY:-127.0.0.1:4433}"

for f in certs/relay.crt certs/client.token; do
    if [[ ! -f $f ]]; then
        echo "$f is missing: start examples/shell/shellrelay.sh first" >&2
        exit 1
    fi
done

echo "forwarding 127.0.0.1:2222 through the relay at $relay; in another terminal run:"
echo
echo "    ssh -p2222 ${USER:-$(id -un)}@localhost"
echo
exec "${shellrelay[@]}" client --relay "$relay" --relay-cert certs/relay.crt \
    --token-file certs/client.token --listen 127.0.0.1:2222
