#!/usr/bin/env bash
# Builds edrgate's image with podman and runs an action through a container, against the
# Carbon Black simulator on the host. No registry is needed: the Debian base is made with
# debootstrap and the binary is built on the host (deploy/Dockerfile's `prebuilt` target), as
# shared/notes/containers-here.md describes.
#
#   deploy/container-test.sh                  # builds target/release/edrgate first
#   BINARY=target/debug/edrgate deploy/container-test.sh
#
# By default the image gets the production binary (`--no-default-features`: no simulators, as
# the Dockerfile builds it) and the simulator runs from a build with them; a given BINARY is
# used for both, unless SIM_BINARY names another one for the simulator.
#
# Needs root (or rootless podman set up) and Debian's podman, runc and debootstrap (installed
# when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."

BINARY=${BINARY:-target/release/edrgate}
SIM_BINARY=${SIM_BINARY:-}
BASE=docker.io/library/debian:bookworm-slim
IMAGE=localhost/edrgate:test
podman() { command podman --runtime /usr/sbin/runc "$@"; }

if ! command -v podman >/dev/null || ! [ -x /usr/sbin/runc ] || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "podman, runc and debootstrap are needed" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null
fi
if ! grep -qs default_ulimits /etc/containers/containers.conf; then
  # crun/ulimit errors otherwise on these machines.
  printf '[containers]\ndefault_ulimits = []\n' >>/etc/containers/containers.conf
fi

production=0
sim_tmp=
if [ "$BINARY" = target/release/edrgate ]; then
  if [ -z "$SIM_BINARY" ]; then
    cargo build --release --locked --bin edrgate
    sim_tmp=$(mktemp)
    trap 'rm -f "$sim_tmp"' EXIT
    cp target/release/edrgate "$sim_tmp"
    SIM_BINARY=$sim_tmp
  fi
  cargo build --release --locked --no-default-features --bin edrgate
  production=1
fi
SIM_BINARY=${SIM_BINARY:-$BINARY}

if ! podman image exists "$BASE"; then
  echo "== making $BASE with debootstrap"
  # The Debian mirror apt uses here (registries are reachable, the internet may not be).
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ' || true)
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

echo "== building $IMAGE"
# Docker format: the OCI one has no HEALTHCHECK.
podman build --format docker --pull=never --network host -f deploy/Dockerfile --target prebuilt \
  --build-arg "BINARY=$BINARY" -t "$IMAGE" . >/dev/null

work=$(mktemp -d)
chmod 0755 "$work"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_port=$(free_port)
gw_port=$(free_port)
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
name="edrgate-test-$$"
cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  kill "${sim_pid:-}" 2>/dev/null || true
  rm -rf "$work"
  [ -z "$sim_tmp" ] || rm -f "$sim_tmp"
}
trap cleanup EXIT

"$SIM_BINARY" sim carbonblack --listen "127.0.0.1:$sim_port" --sensors 3 >"$work/sim.log" 2>&1 &
sim_pid=$!

cat >"$work/edrgate.toml" <<TOML
[server]
listen = "127.0.0.1:$gw_port"
[store]
path = "/var/lib/edrgate/edrgate.db"
[files]
dir = "/var/lib/edrgate/files"
[auth]
allow_hs256 = true
hs256_secret_file = "/etc/edrgate/hs256"
[tenants.demo.backends.cb]
kind = "carbonblack"
url = "http://127.0.0.1:$sim_port"
token = "sim-cb-token-0123456789abcdef01234567"
TOML
printf '%s\n' "$secret" >"$work/hs256"
chmod 0644 "$work/edrgate.toml" "$work/hs256"

echo "== running $IMAGE"
podman run -d --name "$name" --network host -v "$work:/etc/edrgate:ro" "$IMAGE" >/dev/null
base="http://127.0.0.1:$gw_port"
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$base/readyz" 2>/dev/null && break
  sleep 0.2
done
curl -fsS -o /dev/null "$base/readyz" || { podman logs "$name"; exit 1; }
podman exec "$name" /usr/local/bin/edrgate healthcheck --url "$base/healthz"
# The image's own HEALTHCHECK probes port 8080 (this test listens elsewhere): check it is set.
podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q 'edrgate healthcheck\|"healthcheck"' \
  || { echo "the image has no HEALTHCHECK" >&2; exit 1; }
[ "$(podman exec "$name" id -u)" = 10001 ] || { echo "the container does not run as 10001" >&2; exit 1; }
if [ "$production" = 1 ] && podman exec "$name" /usr/local/bin/edrgate sim --help >/dev/null 2>&1; then
  echo "the production image has the simulators" >&2; exit 1
fi

token=$(EDRGATE_JWT_SECRET=$secret "$BINARY" token --tenant demo --sub container-test)
action=$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]}' "$base/v1/actions")
id=$(printf '%s' "$action" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
status=
for _ in $(seq 1 30); do
  status=$(curl -fsS -H "Authorization: Bearer $token" "$base/v1/actions/$id?wait=5" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
  case "$status" in queued|dispatched|running) ;; *) break ;; esac
done
if [ "$status" != succeeded ]; then
  echo "action $id ended $status" >&2
  podman logs "$name" | tail -n 50 >&2
  exit 1
fi
# JSON logs, with the request ids.
podman logs "$name" >"$work/gateway.log" 2>&1
grep -q '"request_id"' "$work/gateway.log" || { echo "no JSON request logs" >&2; tail -n 20 "$work/gateway.log" >&2; exit 1; }
echo "ok: action $id succeeded through the container"
