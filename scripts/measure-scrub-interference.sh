#!/bin/bash
# 4k QD1 write latency beside a scrub, and without one (docs/snapshots.md, "Scrubbing"). Starts `keel up`,
# fills the region, then twice: 10 s of 4k QD32 random writes (garbage for the scrubber), RT s of QD1
# writes while `keel scrub demo` runs, and RT s of QD1 writes alone. Prints IOPS and latency percentiles.
#   scripts/measure-scrub-interference.sh      Environment: REGION=512M RT=10 PORT=11961
set -euo pipefail
cd "$(dirname "$0")/.."
D=$(mktemp -d /tmp/keel-scrub-qd1.XXXX)
PORT=${PORT:-11961}
node bin/keel.js up --data "$D/data" --port "$PORT" --volume-size 2G > "$D/up.log" 2>&1 &
UP=$!
trap 'kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 1 150); do grep -q "Keel is up" "$D/up.log" && break; sleep 0.2; done
URI="nbd://127.0.0.1:$PORT/demo"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size="${REGION:-512M}" --output=/dev/null > /dev/null
qd1() {
  fio --name=qd1 --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --size="${REGION:-512M}" --time_based --runtime="${RT:-10}" \
    --norandommap --randrepeat=0 --output-format=json --output="$D/qd1.json" > /dev/null
  node -e "const w=require('$D/qd1.json').jobs[0].write, p=w.clat_ns.percentile, us=(k)=>Math.round(p[k]/1000);
    console.log('$1', Math.round(w.iops), 'IOPS, p50', us('50.000000'), 'us, p99', us('99.000000'), 'us, p99.9', us('99.900000'), 'us')"
}
for _ in 1 2; do
  fio --name=garbage --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --size="${REGION:-512M}" --time_based --runtime=10 \
    --norandommap --randrepeat=0 --output=/dev/null > /dev/null
  node bin/keel.js scrub demo --data "$D/data" --json > "$D/scrub.json" 2> /dev/null &
  SCRUB=$!
  qd1 "QD1 beside a scrub:"
  wait $SCRUB
  node -e "const r=require('$D/scrub.json'); console.log('  the scrub:', r.durationMs, 'ms,', r.clustersRewritten, 'clusters moved,', r.scosDeleted, 'SCOs deleted')"
  qd1 "QD1 alone:         "
done
