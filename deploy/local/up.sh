#!/usr/bin/env bash
# Starts a complete local Portcullis on its embedded defaults, with no external service:
# the control plane (event log on sled), two gateway nodes, a demo upstream MCP server and
# the demo configuration (deploy/local/demo.yaml). Ctrl-C stops everything.
#
#   deploy/local/up.sh            build, start, print how to connect, wait for ctrl-c
#   deploy/local/up.sh --check    the same, then check both nodes serve the demo and stop
#
# Keys, tokens, logs and data live in .portcullis-dev/ (PORTCULLIS_DEV_DIR); they are made
# on the first run and reused after. Ports: PORTCULLIS_CP_PORT (7300),
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
[[ "${1:-}" == "--check" ]] && CHECK=true

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

say "starting the control plane on 127.0.0.1:$CP_PORT (data in $DEV_DIR/control-plane)"
start control-plane "$BIN/portcullis-control-plane" \
    --data-dir "$DEV_DIR/control-plane" \
    --listen "127.0.0.1:$CP_PORT" \
    --master-key-file "$DEV_DIR/master.key" \
    --access-file "$DEV_DIR/access.yaml"

export PORTCULLIS_ENDPOINT="http://127.0.0.1:$CP_PORT"
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
    say "starting $node on 127.0.0.1:$port"
    start "$node" "$BIN/portcullis-node" \
        --node-id "$node" \
        --listen "127.0.0.1:$port" \
        --control-plane "$PORTCULLIS_ENDPOINT" \
        --node-token-file "$DEV_DIR/node.token" \
        --state-dir "$DEV_DIR/$node" \
        --state-key-file "$DEV_DIR/$node-state.key"
done

# Wait until every node applied the latest snapshot.
nodes_ready() {
    "$BIN/portcullisctl" fleet | grep -q "^${#NODE_PORTS[@]} of ${#NODE_PORTS[@]} nodes on the latest version"
}
for _ in $(seq 1 100); do
    nodes_ready && break
    sleep 0.1
done
"$BIN/portcullisctl" fleet

cat <<TEXT

Portcullis is running.
  MCP servers:      http://127.0.0.1:${NODE_PORTS[0]}/mcp/demo       (API key added by the gateway)
                    http://127.0.0.1:${NODE_PORTS[0]}/mcp/demo-bearer (bearer token added by the gateway)
                    and the same paths on every node: ${NODE_PORTS[*]}
  Control plane:    $PORTCULLIS_ENDPOINT (gRPC admin API; reflection is on)
  Logs and data:    $DEV_DIR

Point an MCP client at a server URL, for example:
  npx @modelcontextprotocol/inspector --cli http://127.0.0.1:${NODE_PORTS[0]}/mcp/demo --method tools/list
  Claude Desktop / Cursor / VS Code: add a streamable HTTP server with that URL.
The demo upstream's echo_headers tool shows what the gateway sent upstream.

Administer it:
  export PORTCULLIS_ENDPOINT=$PORTCULLIS_ENDPOINT PORTCULLIS_TOKEN=\$(cat $DEV_DIR/admin.token)
  $BIN/portcullisctl server list
  $BIN/portcullisctl history server demo
TEXT

# One MCP request in the check: POSTs $2 (JSON-RPC) to $1 with session $3 (may be empty),
# leaves the response headers and body in $DEV_DIR/check.headers and check.body, and
# prints the HTTP status.
mcp_post() {
    local session_header=()
    [[ -n "$3" ]] && session_header=(-H "mcp-session-id: $3")
    curl -sS --max-time 10 -D "$DEV_DIR/check.headers" -o "$DEV_DIR/check.body" \
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
        check_tool_sees "http://127.0.0.1:$port/mcp/demo" echo_headers "$(cat "$DEV_DIR/demo-api-key")"
        check_tool_sees "http://127.0.0.1:$port/mcp/demo-bearer" whoami "Bearer $(cat "$DEV_DIR/demo-bearer")"
    done
    rm -f "$DEV_DIR/check.headers" "$DEV_DIR/check.body"
    say "check passed"
    exit 0
fi
say "press ctrl-c to stop"
wait
