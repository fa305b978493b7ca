#!/bin/bash
# Per-process CPU per I/O of Keel's data path under fio (docs/benchmark.md, "Profiling Keel").
# Starts `keel up` (3 routers + 1 edge) in a temp directory, fills the region, runs each fio job at
# 4k QD32 and prints IOPS, p50 latency, fio's CPU and, for every edge/router process, its CPU share and
# microseconds of CPU (utime+stime from /proc/PID/stat) per I/O. Stops the cluster afterwards.
#
#   scripts/measure-data-path.sh [randwrite|randread ...]     (default: randwrite randread)
# Environment:
#   RT=8            seconds per job           REGION=256M   fio region (and fill size)
#   VOLSIZE=1G      volume size               FILL=0        skip the 1M fill
#   DTL=none|async|sync   measure a volume created with that DTL mode instead of the demo volume (sync)
#   UPARGS="--write-buffer 384M"   extra `keel up` options
#   PROF=DIR        V8 CPU profiles of every router and the edge into DIR (KEEL_CHILD_NODE_ARGS)
#   BS=4k QD=32     fio block size and queue depth
#   STATUS=1        after each job, print the volume's counters from its owner's GET /status, and its DTL peer's
#   PCT=1           also print p99, p99.9 and the largest latency
#   SCHED=1         also print the machine's idle share (/proc/stat) and, per process, how much of the job its
#                   main thread ran and how much it waited in the run queue (/proc/PID/schedstat)
#   SETTLE=0        seconds to wait after the fill (uploads of the filled SCOs finish first)
#   FIOARGS="--rate_iops=20000"   extra fio options for the measured jobs (a fixed rate gives steadier CPU per I/O)
#   PIN="edge=0 r1=1 fio=0"   pin those processes to those CPUs (taskset) for the measured jobs
#   PORT=11809
set -euo pipefail
cd "$(dirname "$0")/.."
D=$(mktemp -d /tmp/keel-measure.XXXX)
PORT=${PORT:-11809}
RT=${RT:-8}
REGION=${REGION:-256M}
if [ -n "${PROF:-}" ]; then export KEEL_CHILD_NODE_ARGS="--cpu-prof --cpu-prof-dir=$PROF"; fi
# shellcheck disable=SC2086
node bin/keel.js up --data "$D/data" --port "$PORT" --volume-size "${VOLSIZE:-1G}" ${UPARGS:-} > "$D/up.log" 2>&1 &
UP=$!
trap 'kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 1 150); do grep -q "Keel is up" "$D/up.log" && break; sleep 0.2; done
grep -q "Keel is up" "$D/up.log" || { echo "keel up did not start:"; cat "$D/up.log"; exit 1; }
VOL=demo
if [ -n "${DTL:-}" ]; then
  VOL="v$DTL"
  node bin/keel.js volume create "$VOL" "${VOLSIZE:-1G}" --dtl-mode "$DTL" --data "$D/data" > /dev/null
fi
URI="nbd://127.0.0.1:$PORT/$VOL"
if [ "${FILL:-1}" = 1 ]; then
  fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size="$REGION" --output="$D/fill.txt" > /dev/null
fi
sleep "${SETTLE:-0}"
# PIN="edge=0 r1=1 fio=0": pins those processes (all their threads) to those CPUs for the measured jobs.
name_of() { tr '\0' ' ' < "/proc/$1/cmdline" | grep -o "router --id r[0-9]*\|edge" | sed 's/router --id //' | head -1; }
FIOPIN=()
for pin in ${PIN:-}; do
  who=${pin%=*}; cpu=${pin#*=}
  if [ "$who" = fio ]; then FIOPIN=(taskset -c "$cpu"); continue; fi
  for p in $(pgrep -P $UP); do [ "$(name_of "$p")" = "$who" ] && taskset -a -p -c "$cpu" "$p" > /dev/null; done
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Main thread's run time and run-queue wait, in ns (the first two fields of schedstat).
sched_ns() { awk '{print $1, $2}' "/proc/$1/schedstat"; }
# idle+iowait and total jiffies of all cores.
cpu_idle_total() { awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
for rw in "${@:-randwrite randread}"; do
  for rwi in $rw; do
    declare -A before=() sched_before=()
    for p in $(pgrep -P $UP); do before[$p]=$(cpu_ticks "$p"); sched_before[$p]=$(sched_ns "$p"); done
    read -r idle_before total_before < <(cpu_idle_total)
    t0=$(date +%s.%N)
    "${FIOPIN[@]}" fio --name=job --ioengine=nbd --uri="$URI" --rw="$rwi" --bs="${BS:-4k}" --iodepth="${QD:-32}" --size="$REGION" --time_based --runtime="$RT" \
      --norandommap --randrepeat=0 ${FIOARGS:-} --output-format=json --output="$D/$rwi.json" > /dev/null
    t1=$(date +%s.%N)
    read -r iops rest < <(node -e "const j=require('$D/$rwi.json').jobs[0]; const d=j['${rwi#rand}'];
      console.log(Math.round(d.iops), Math.round(d.clat_ns.percentile['50.000000']/1000)+' us p50 '+(process.env.PCT?Math.round(d.clat_ns.percentile['99.000000']/1000)+' us p99 '+Math.round(d.clat_ns.percentile['99.900000']/1000)+' us p99.9 '+Math.round(d.clat_ns.max/1000)+' us max':'')+', fio CPU '+(j.usr_cpu+j.sys_cpu).toFixed(0)+'%')")
    line="$rwi: $iops IOPS, $rest |"
    for p in $(pgrep -P $UP); do
      ticks=$(( $(cpu_ticks "$p") - ${before[$p]} ))
      line="$line $(name_of "$p") $(node -e "const s=$t1-$t0; console.log(($ticks/s).toFixed(0)+'%', ($ticks*10000/($iops*s)).toFixed(1)+' us/IO')")"
    done
    echo "$line"
    if [ "${SCHED:-0}" = 1 ]; then
      read -r idle_after total_after < <(cpu_idle_total)
      line="  sched: machine idle $(( 100 * (idle_after - idle_before) / (total_after - total_before) ))% |"
      for p in $(pgrep -P $UP); do
        read -r run0 wait0 <<< "${sched_before[$p]}"
        read -r run1 wait1 < <(sched_ns "$p")
        line="$line $(name_of "$p") ran $(node -e "const s=($t1-$t0)*1e9; console.log((100*($run1-$run0)/s).toFixed(0)+'%, waited '+(100*($wait1-$wait0)/s).toFixed(0)+'%')")"
      done
      echo "$line"
    fi
    if [ "${STATUS:-0}" = 1 ]; then
      for a in $(grep -o '"mgmtAddress":"[^"]*"' "$D/up.log" | cut -d'"' -f4); do
        curl -s "http://$a/status" | node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8'));
          for (const v of j.volumes ?? []) if (v.name === '$VOL') console.log('  ' + JSON.stringify(v.stats)); const jn = j.ha?.journals?.['$VOL']; if (jn) console.log('  dtl ' + JSON.stringify(jn));
          if (j.dtl?.streams) console.log('  dtl peer ' + JSON.stringify(j.dtl))"
      done
    fi
  done
done
