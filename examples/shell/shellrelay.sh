#!/usr/bin/env bash
# Terminal 1 of 3: the relay.
#
# Makes a shared secret (once), mints one-hour host and client tokens, and
# runs the relay on $SHELLRELAY_RELAY (default 127.0.0.1:4433). On its first
# start the relay writes a self-signed certs/relay.crt and certs/relay.key
# and logs the certificate's SHA-256 fingerprint.
#
# Next: run examples/shell/shellhost.sh in terminal 2.
#
# Environment:
#   SHELLRELAY          command to run (default: cargo run --release --quiet --)
#   SHELLRELAY_RELAY    address the relay listens on (default 127.0.0.1:4433)
#   SHELLRELAY_HOST_ID  host id the tokens are minted for (default lab1)
set -euo pipefail
cd "$(dirname "$0")/../.."

read -r -a shellrelay <<<"${SHELLRELAY:-cargo run --release --quiet --}"
relay="${SHELLRELAY_RELAY:-127.0.0.1:4433}"
host_id="${SHELLRELAY_HOST_ID:-lab1}"

mkdir -p certs
if [[ ! -s certs/secret ]]; then
    "${shellrelay[@]}" keygen --kind hs256 --out certs/secret
fi

# `token --out` writes the file readable by its owner only, and only once
# the token is signed.
mint() {
    local role=$1 out=$2
    "${shellrelay[@]}" token --secret-file certs/secret \
        --role "$role" --host "$host_id" --ttl 1h --out "$out"
    echo "made $out ($role token for host $host_id, valid for one hour)"
}
mint host certs/host.token
mint client certs/client.token

echo "starting the relay on udp $relay; next: examples/shell/shellhost.sh"
exec "${shellrelay[@]}" relay --listen "$relay" --secret-file certs/secret
