#!/usr/bin/env bash
# File-transfer benchmark (see deploy/BENCHMARKS.md, "File transfer"): a SIZE-byte file is
# fetched from the Carbon Black simulator through the gateway, uploaded, downloaded whole, by
# ranges and as a zip, while the gateway's memory is sampled. Each HTTP transfer is compared with
# the same transfer between curl and a minimal loopback server (loopback_server.py).
# Not a test: run by hand. Needs curl and python3; writes about 4 × SIZE bytes under WORK.
#
#   deploy/bench/transfer.sh                       # 2 GiB
#   SIZE=$((256 << 20)) deploy/bench/transfer.sh   # quicker
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE=${SIZE:-2147483648}
RANGE=${RANGE:-268435456}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/edrgate-transfer.XXXXXX")}
mkdir -p "$WORK"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin edrgate
BIN=$PWD/target/release/edrgate

port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

SIM_PORT=$(port)
GW_PORT=$(port)
BASE_PORT=$(port)
"$BIN" sim carbonblack --listen "127.0.0.1:$SIM_PORT" --sensors 1 --checkin-delay-ms 10 \
  --command-latency-ms 1 --file-size-bytes "$SIZE" >"$WORK/sim.log" 2>&1 &
pids+=($!)
cat >"$WORK/edrgate.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
[store]
path = "$WORK/edrgate.db"
[files]
dir = "$WORK/files"
max_upload_bytes = $((SIZE * 2))
[auth]
allow_hs256 = true
hs256_secret = "transfer-bench-secret-0123456789abcdef0123"
[tenants.acme.backends.cb]
kind = "carbonblack"
url = "http://127.0.0.1:$SIM_PORT"
token = "sim-cb-token-0123456789abcdef01234567"
EOF
RUST_LOG=warn "$BIN" serve --config "$WORK/edrgate.toml" >"$WORK/gateway.log" 2>&1 &
GW=$!
pids+=("$GW")
TOKEN=$("$BIN" token --config "$WORK/edrgate.toml" --tenant acme --sub bench)
API="http://127.0.0.1:$GW_PORT"
for _ in $(seq 1 100); do curl -fs -o /dev/null "$API/readyz" && break; sleep 0.1; done

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$GW/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
reset_peak() { echo 5 >"/proc/$GW/clear_refs"; }
IDLE=$(kib VmRSS)
echo "machine: $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM"
echo "commit: $(git rev-parse --short HEAD), size: $SIZE bytes, ranges of $RANGE bytes"
echo "gateway idle RSS: $(mib "$IDLE") MiB"
printf "%-34s %9s %10s %14s\n" phase seconds "MiB/s" "peak-idle MiB"
report() { # phase seconds
  local peak
  peak=$(kib VmHWM)
  printf "%-34s %9.2f %10.0f %14.1f\n" "$1" "$2" "$(awk -v s="$SIZE" -v t="$2" 'BEGIN {print s / 1048576 / t}')" "$(mib $((peak - IDLE)))"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {print b - a}'; }
EXPECTED=""

# 1. Fetch from the endpoint (get_file of C:\evidence\big.bin, in the adapter's 4 MiB ranges).
reset_peak
t=$(now)
ACTION=$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"targets": [{"backend": "cb", "device_id": "1"}], "commands": [{"type": "get_file", "path": "C:\\evidence\\big.bin"}]}' \
  "$API/v1/actions" | json 'd["id"]')
while :; do
  STATE=$(curl -fsS -H "Authorization: Bearer $TOKEN" "$API/v1/actions/$ACTION?wait=30")
  STATUS=$(echo "$STATE" | json 'd["status"]')
  case $STATUS in succeeded) break ;; failed | partially_succeeded | cancelled | timed_out) echo "$STATE"; exit 1 ;; esac
done
report "fetch from the CB simulator" "$(elapsed "$t")"
FETCHED=$(echo "$STATE" | json 'd["runs"][0]["commands"][0]["result"]["file"]["file_id"]')
EXPECTED=$(echo "$STATE" | json 'd["runs"][0]["commands"][0]["result"]["file"]["sha256"]')
STORED="$WORK/files/acme/$FETCHED"

# 2. Download whole (digest verified by the gateway while streaming; checked again here).
reset_peak
t=$(now)
curl -fsS -H "Authorization: Bearer $TOKEN" -o "$WORK/download.bin" "$API/v1/files/$FETCHED/content"
report "download whole (to disk)" "$(elapsed "$t")"
[ "$(sha256sum "$WORK/download.bin" | cut -d' ' -f1)" = "$EXPECTED" ] || { echo "digest mismatch"; exit 1; }
reset_peak
t=$(now)
curl -fsS -H "Authorization: Bearer $TOKEN" -o /dev/null "$API/v1/files/$FETCHED/content"
report "download whole (to /dev/null)" "$(elapsed "$t")"

# 3. Download by ranges, reassembled and checked.
reset_peak
t=$(now)
: >"$WORK/ranges.bin"
for ((off = 0; off < SIZE; off += RANGE)); do
  curl -fsS -H "Authorization: Bearer $TOKEN" -r "$off-$((off + RANGE - 1))" "$API/v1/files/$FETCHED/content" >>"$WORK/ranges.bin"
done
report "download by ranges (to disk)" "$(elapsed "$t")"
[ "$(sha256sum "$WORK/ranges.bin" | cut -d' ' -f1)" = "$EXPECTED" ] || { echo "digest mismatch (ranges)"; exit 1; }
rm -f "$WORK/ranges.bin"

# 4. Upload (streamed to storage, digest on the way).
reset_peak
t=$(now)
UPLOADED=$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/octet-stream' \
  -T "$WORK/download.bin" -X POST "$API/v1/files?name=big.bin" | json 'd["sha256"]')
report "upload (from disk)" "$(elapsed "$t")"
[ "$UPLOADED" = "$EXPECTED" ] || { echo "digest mismatch (upload)"; exit 1; }

# 5. Zip (AES-256, deflate level 1).
reset_peak
t=$(now)
curl -fsS -H "Authorization: Bearer $TOKEN" -o /dev/null "$API/v1/files/$FETCHED/content?archive=zip&password=infected"
report "download as zip (to /dev/null)" "$(elapsed "$t")"
echo "gateway peak RSS over the whole run is the largest peak above; idle $(mib "$IDLE") MiB"

# Baseline: the same HTTP transfers between curl and loopback_server.py.
python3 deploy/bench/loopback_server.py "$BASE_PORT" "$STORED" "$WORK/baseline-upload.bin" &
pids+=($!)
for _ in $(seq 1 100); do curl -fs -o /dev/null -r 0-0 "http://127.0.0.1:$BASE_PORT/" && break; sleep 0.1; done
echo "baseline (curl <-> loopback_server.py):"
t=$(now)
curl -fsS -o "$WORK/baseline-download.bin" "http://127.0.0.1:$BASE_PORT/"
b=$(elapsed "$t")
printf "%-34s %9.2f %10.0f\n" "download whole (to disk)" "$b" "$(awk -v s="$SIZE" -v t="$b" 'BEGIN {print s / 1048576 / t}')"
rm -f "$WORK/baseline-download.bin"
t=$(now)
curl -fsS -o /dev/null "http://127.0.0.1:$BASE_PORT/"
b=$(elapsed "$t")
printf "%-34s %9.2f %10.0f\n" "download whole (to /dev/null)" "$b" "$(awk -v s="$SIZE" -v t="$b" 'BEGIN {print s / 1048576 / t}')"
t=$(now)
curl -fsS -T "$WORK/download.bin" "http://127.0.0.1:$BASE_PORT/upload"
b=$(elapsed "$t")
printf "%-34s %9.2f %10.0f\n" "upload (from disk)" "$b" "$(awk -v s="$SIZE" -v t="$b" 'BEGIN {print s / 1048576 / t}')"
rm -rf "$WORK"
