#!/bin/bash
# bench-diag.sh OUT DIR BYTES: the serial bench's tsvmm run (tools/bench/serial.mjs --only tsvmm)
# with an API socket; GET /diagnosis every 10 s, and when the console has not grown for 20 s,
# two diagnoses 10 s apart, then the bench is stopped.
set -u
out=$1 dir=$2 bytes=$3
S=/tmp/bench-api.sock
cd "$dir"
TSVMM_BENCH_RUN_ARGS="--api-sock $S" node tools/bench/serial.mjs --only tsvmm --bytes "$bytes" --timeout 420 --out "$out/bench-tsvmm.json" >"$out/bench.out" 2>"$out/bench.err" &
bpid=$!
last=-1 same=0 n=0 k=0
while kill -0 $bpid 2>/dev/null; do
  sleep 10
  curl -s --max-time 20 --unix-socket $S http://localhost/diagnosis >"$out/poll.json" 2>/dev/null || continue
  tot=$(python3 -c "import json;print(json.load(open('$out/poll.json'))['console']['totalBytes'])" 2>/dev/null) || continue
  k=$((k+1)); echo "$(date -u +%T) console $tot" >>"$out/polls.txt"
  if [ "$tot" = "$last" ]; then same=$((same+1)); else same=0; fi
  last=$tot
  if [ $same -ge 2 ]; then
    n=$((n+1)); cp "$out/poll.json" "$out/stall-diag$n.json"
    echo "stall at $tot B ($(date -u +%T)), diagnosis $n" | tee -a "$out/summary.txt"
    if [ $n -ge 2 ]; then pkill -P $bpid; kill $bpid; break; fi
  fi
done
wait $bpid; echo "bench rc=$? polls=$k last console=$last" | tee -a "$out/summary.txt"
tail -c 400 "$out/bench.err" | tr -s x >>"$out/summary.txt"
