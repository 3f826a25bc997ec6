#!/usr/bin/env bash
# Starts a complete local Portcullis on its embedded defaults, with no external service:
# the control plane (event log on sled), two gateway nodes, a demo upstream MCP server and
# the demo configuration (deploy/local/demo.yaml). Ctrl-C stops everything.
#
#   deploy/local/up.sh              build, start, print how to connect, wait for ctrl-c
#   deploy/local/up.sh --check      the same, then check both nodes serve the demo and stop
#   deploy/local/up.sh --node-tls   the nodes' MCP listeners speak TLS too (https:// URLs)
#   deploy/local/up.sh --plaintext  no TLS anywhere: nodes authenticate with the node token
#
# TLS: by default every link to the control plane runs over TLS with mTLS: the control
# plane's gRPC listener presents a development certificate, nodes authenticate with client
# certificates (common name = node id) instead of the node token, and portcullisctl trusts
# the development CA. The certificates come from `portcullis-control-plane dev-certs` into
# .portcullis-dev/certs/ (ca.pem is what clients trust). The nodes' MCP listeners stay
# plaintext on loopback by default, so any MCP client works without trusting a CA;
# --node-tls puts them on TLS with the same development CA (clients then need ca.pem, e.g.
# NODE_EXTRA_CA_CERTS for Node.js clients, --cacert for curl). Options combine, in any
# order.
#
# Keys, tokens, certificates, logs and data live in .portcullis-dev/ (PORTCULLIS_DEV_DIR);
# they are made on the first run and reused after. Ports: PORTCULLIS_CP_PORT (7300),
# PORTCULLIS_NODE_PORTS ("7400 7401"), PORTCULLIS_DEMO_UPSTREAM_PORT (7500).
# PORTCULLIS_PROFILE=release builds optimised binaries; PORTCULLIS_SKIP_BUILD=1 uses the
# binaries already built, from PORTCULLIS_BIN_DIR if set (default: target/<profile>).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEV_DIR="${PORTCULLIS_DEV_DIR:-$ROOT/.portcullis-dev}"
CP_PORT="${PORTCULLIS_CP_PORT:-7300}"
read -r -a NODE_PORTS <<<"${PORTCULLIS_NODE_PORTS:-7400 7401}"
UPSTREAM_PORT="${PORTCULLIS_DEMO_UPSTREAM_PORT:-7500}"
PROFILE="${PORTCULLIS_PROFILE:-dev}"
CHECK=false
CP_TLS=true
NODE_TLS=false
for argument in "$@"; do
    case "$argument" in
        --check) CHECK=true ;;
        --node-tls) NODE_TLS=true ;;
        --plaintext) CP_TLS=false ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            printf 'up.sh: unknown option %s (see --help)\n' "$argument" >&2
            exit 64
            ;;
    esac
done
if $NODE_TLS && ! $CP_TLS; then
    printf 'up.sh: --node-tls and --plaintext exclude each other\n' >&2
    exit 64
fi

case "$PROFILE" in release) PROFILE_DIR=release ;; *) PROFILE_DIR=debug ;; esac
BIN="${PORTCULLIS_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'up.sh: %s\n' "$*" >&2; exit 1; }

if [[ "${PORTCULLIS_SKIP_BUILD:-}" != "1" ]]; then
    say "building (cargo build --profile $PROFILE --bins)"
    (cd "$ROOT" && cargo build --profile "$PROFILE" --bins -p portcullis-control-plane \
        -p portcullis-data-plane -p portcullis-tests)
fi
for binary in portcullis-control-plane portcullisctl portcullis-node echo-upstream; do
    [[ -x "$BIN/$binary" ]] || die "missing $BIN/$binary; build it with cargo build --bins"
done

mkdir -p "$DEV_DIR/logs"
chmod 700 "$DEV_DIR"

random_token() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# Secrets of this local installation, made once.
[[ -f "$DEV_DIR/master.key" ]] || "$BIN/portcullis-control-plane" generate-key --out "$DEV_DIR/master.key" >/dev/null
for name in admin.token node.token demo-api-key demo-bearer; do
    [[ -f "$DEV_DIR/$name" ]] || (umask 077 && random_token >"$DEV_DIR/$name")
done
for index in "${!NODE_PORTS[@]}"; do
    key="$DEV_DIR/node-$((index + 1))-state.key"
    [[ -f "$key" ]] || "$BIN/portcullis-control-plane" generate-key --out "$key" >/dev/null
done
# Development certificates: a CA, a server certificate for 127.0.0.1 and localhost (the
# control plane's listener, and the nodes' with --node-tls), a client certificate per node.
# Made again when one is missing (e.g. more nodes than last time).
CERTS="$DEV_DIR/certs"
if $CP_TLS; then
    certs_complete=true
    for file in ca.pem server.pem server.key; do
        [[ -f "$CERTS/$file" ]] || certs_complete=false
    done
    node_cert_args=()
    for index in "${!NODE_PORTS[@]}"; do
        node="node-$((index + 1))"
        node_cert_args+=(--node "$node")
        [[ -f "$CERTS/node-$node.pem" && -f "$CERTS/node-$node.key" ]] || certs_complete=false
    done
    if ! $certs_complete; then
        "$BIN/portcullis-control-plane" dev-certs --out "$CERTS" "${node_cert_args[@]}" >/dev/null
    fi
fi

hash() { "$BIN/portcullis-control-plane" hash-token <"$1"; }
cat >"$DEV_DIR/access.yaml" <<YAML
tokens:
  - name: local-admin
    role: admin
    sha256: $(hash "$DEV_DIR/admin.token")
  - name: local-nodes
    role: node
    sha256: $(hash "$DEV_DIR/node.token")
YAML

PIDS=()
cleanup() {
    trap - EXIT INT TERM
    if ((${#PIDS[@]} > 0)); then
        say "stopping"
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a process with its stdout in logs/NAME.out and stderr in logs/NAME.log, and waits
# for its "listening on" line.
start() {
    local name="$1"
    shift
    local out="$DEV_DIR/logs/$name.out"
    : >"$out"
    "$@" >"$out" 2>"$DEV_DIR/logs/$name.log" &
    PIDS+=("$!")
    local pid=$!
    for _ in $(seq 1 300); do
        if grep -q "listening on" "$out" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "$name exited; see $DEV_DIR/logs/$name.log:
$(tail -n 20 "$DEV_DIR/logs/$name.log")"
        sleep 0.1
    done
    die "$name did not start within 30s; see $DEV_DIR/logs/$name.log"
}

say "starting the demo upstream MCP server on 127.0.0.1:$UPSTREAM_PORT"
start echo-upstream "$BIN/echo-upstream" --listen "127.0.0.1:$UPSTREAM_PORT"

CP_TLS_ARGS=()
NODE_CP_ARGS=(--node-token-file "$DEV_DIR/node.token")
NODE_SCHEME=http
if $CP_TLS; then
    CP_TLS_ARGS=(--tls-cert-file "$CERTS/server.pem" --tls-key-file "$CERTS/server.key"
        --client-ca-file "$CERTS/ca.pem")
    export PORTCULLIS_ENDPOINT="https://127.0.0.1:$CP_PORT"
    # portcullisctl trusts the development CA through this variable.
    export PORTCULLIS_CA_FILE="$CERTS/ca.pem"
    say "starting the control plane on 127.0.0.1:$CP_PORT with TLS and node mTLS (data in $DEV_DIR/control-plane)"
else
    export PORTCULLIS_ENDPOINT="http://127.0.0.1:$CP_PORT"
    say "starting the control plane on 127.0.0.1:$CP_PORT, plaintext (data in $DEV_DIR/control-plane)"
fi
start control-plane "$BIN/portcullis-control-plane" \
    --data-dir "$DEV_DIR/control-plane" \
    --listen "127.0.0.1:$CP_PORT" \
    --master-key-file "$DEV_DIR/master.key" \
    --access-file "$DEV_DIR/access.yaml" \
    "${CP_TLS_ARGS[@]}"

export PORTCULLIS_TOKEN
PORTCULLIS_TOKEN="$(cat "$DEV_DIR/admin.token")"

say "applying the demo configuration (deploy/local/demo.yaml)"
sed "s/\${PORTCULLIS_DEMO_UPSTREAM_PORT}/$UPSTREAM_PORT/g" "$ROOT/deploy/local/demo.yaml" >"$DEV_DIR/demo.yaml"
PORTCULLIS_DEMO_API_KEY="$(cat "$DEV_DIR/demo-api-key")" \
PORTCULLIS_DEMO_BEARER="$(cat "$DEV_DIR/demo-bearer")" \
    "$BIN/portcullisctl" apply -f "$DEV_DIR/demo.yaml"

for index in "${!NODE_PORTS[@]}"; do
    node="node-$((index + 1))"
    port="${NODE_PORTS[$index]}"
    node_args=("${NODE_CP_ARGS[@]}")
    if $CP_TLS; then
        # mTLS: the client certificate names the node; no node token needed.
        node_args=(--control-plane-ca-file "$CERTS/ca.pem"
            --control-plane-client-cert-file "$CERTS/node-$node.pem"
            --control-plane-client-key-file "$CERTS/node-$node.key")
    fi
    if $NODE_TLS; then
        NODE_SCHEME=https
        node_args+=(--tls-cert-file "$CERTS/server.pem" --tls-key-file "$CERTS/server.key")
    fi
    say "starting $node on $NODE_SCHEME://127.0.0.1:$port"
    start "$node" "$BIN/portcullis-node" \
        --node-id "$node" \
        --listen "127.0.0.1:$port" \
        --control-plane "$PORTCULLIS_ENDPOINT" \
        --state-dir "$DEV_DIR/$node" \
        --state-key-file "$DEV_DIR/$node-state.key" \
        "${node_args[@]}"
done
NODE_URL="$NODE_SCHEME://127.0.0.1:${NODE_PORTS[0]}"

# Wait until every node applied the latest snapshot.
nodes_ready() {
    "$BIN/portcullisctl" fleet | grep -q "^${#NODE_PORTS[@]} of ${#NODE_PORTS[@]} nodes on the latest version"
}
for _ in $(seq 1 100); do
    nodes_ready && break
    sleep 0.1
done
"$BIN/portcullisctl" fleet

if $CP_TLS; then
    CP_SECURITY="TLS; nodes authenticate by client certificate (mTLS)"
    ADMIN_EXPORTS="PORTCULLIS_ENDPOINT=$PORTCULLIS_ENDPOINT PORTCULLIS_CA_FILE=$PORTCULLIS_CA_FILE"
else
    CP_SECURITY="plaintext"
    ADMIN_EXPORTS="PORTCULLIS_ENDPOINT=$PORTCULLIS_ENDPOINT"
fi
if $NODE_TLS; then
    NODE_SECURITY="TLS: clients trust $CERTS/ca.pem"
    INSPECTOR="NODE_EXTRA_CA_CERTS=$CERTS/ca.pem npx @modelcontextprotocol/inspector --cli $NODE_URL/mcp/demo --method tools/list"
    CLIENT_HINT="Claude Desktop / Cursor / VS Code: add a streamable HTTP server with that URL; the
  client's system must trust $CERTS/ca.pem."
else
    NODE_SECURITY="plaintext on loopback; --node-tls for TLS"
    INSPECTOR="npx @modelcontextprotocol/inspector --cli $NODE_URL/mcp/demo --method tools/list"
    CLIENT_HINT="Claude Desktop / Cursor / VS Code: add a streamable HTTP server with that URL."
fi

cat <<TEXT

Portcullis is running.
  MCP servers:      $NODE_URL/mcp/demo       (API key added by the gateway)
                    $NODE_URL/mcp/demo-bearer (bearer token added by the gateway)
                    and the same paths on every node: ${NODE_PORTS[*]} ($NODE_SECURITY)
  Control plane:    $PORTCULLIS_ENDPOINT (gRPC admin API; reflection is on; $CP_SECURITY)
  Certificates:     $(if $CP_TLS; then echo "$CERTS (CA for clients: $CERTS/ca.pem; development only)"; else echo "none (--plaintext)"; fi)
  Logs and data:    $DEV_DIR

Point an MCP client at a server URL, for example:
  $INSPECTOR
  $CLIENT_HINT
The demo upstream's echo_headers tool shows what the gateway sent upstream.

Administer it:
  export $ADMIN_EXPORTS PORTCULLIS_TOKEN=\$(cat $DEV_DIR/admin.token)
  $BIN/portcullisctl server list
  $BIN/portcullisctl history server demo
TEXT

# One MCP request in the check: POSTs $2 (JSON-RPC) to $1 with session $3 (may be empty),
# leaves the response headers and body in $DEV_DIR/check.headers and check.body, and
# prints the HTTP status.
mcp_post() {
    local session_header=() tls_args=()
    [[ -n "$3" ]] && session_header=(-H "mcp-session-id: $3")
    $NODE_TLS && tls_args=(--cacert "$CERTS/ca.pem")
    curl -sS --max-time 10 "${tls_args[@]}" -D "$DEV_DIR/check.headers" -o "$DEV_DIR/check.body" \
        -w '%{http_code}' -X POST \
        -H 'content-type: application/json' \
        -H 'accept: application/json, text/event-stream' \
        -H 'mcp-protocol-version: 2025-06-18' \
        "${session_header[@]}" --data "$2" "$1"
}

# Initializes a session at $1, calls tool $2, and checks the result mentions $3: the
# credential the gateway added, as the demo upstream reports it.
check_tool_sees() {
    local url="$1" tool="$2" expected="$3" status session
    status="$(mcp_post "$url" '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"up.sh","version":"1"}}}' "")" ||
        die "initialize through $url failed"
    [[ "$status" == "200" ]] || die "initialize through $url answered $status: $(cat "$DEV_DIR/check.body")"
    session="$(tr -d '\r' <"$DEV_DIR/check.headers" | sed -n 's/^[Mm][Cc][Pp]-[Ss]ession-[Ii][Dd]: *//p')"
    status="$(mcp_post "$url" '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$session")" ||
        die "notifications/initialized through $url failed"
    [[ "$status" == 2* ]] || die "notifications/initialized through $url answered $status"
    status="$(mcp_post "$url" "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"$tool\",\"arguments\":{}}}" "$session")" ||
        die "tools/call $tool through $url failed"
    [[ "$status" == "200" ]] || die "tools/call $tool through $url answered $status: $(cat "$DEV_DIR/check.body")"
    grep -qF -- "$expected" "$DEV_DIR/check.body" ||
        die "the demo upstream did not see the gateway's credential through $url ($tool): $(cat "$DEV_DIR/check.body")"
}

if $CHECK; then
    say "checking: every node runs the latest snapshot and adds each server's credential"
    command -v curl >/dev/null || die "--check needs curl"
    nodes_ready || die "a node is behind the latest snapshot"
    for port in "${NODE_PORTS[@]}"; do
        check_tool_sees "$NODE_SCHEME://127.0.0.1:$port/mcp/demo" echo_headers "$(cat "$DEV_DIR/demo-api-key")"
        check_tool_sees "$NODE_SCHEME://127.0.0.1:$port/mcp/demo-bearer" whoami "Bearer $(cat "$DEV_DIR/demo-bearer")"
    done
    if $NODE_TLS; then
        # The MCP listeners speak TLS only: plaintext HTTP gets no MCP answer.
        status="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:${NODE_PORTS[0]}/readyz" 2>/dev/null || true)"
        [[ "$status" != 2* ]] || die "a node's TLS listener answered plaintext HTTP with $status"
    fi
    rm -f "$DEV_DIR/check.headers" "$DEV_DIR/check.body"
    say "check passed"
    exit 0
fi
say "press ctrl-c to stop"
wait
