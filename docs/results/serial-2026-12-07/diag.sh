#!/bin/bash
# diag.sh OUT DIR LABEL [APPEND]: tsvmm run with the API, an exec writing 128 KiB to ttyS0; on a
# stall (console not growing for 20 s) GET /diagnosis twice, 10 s apart.
set -u
out=$1 dir=$2 label=$3 app=${4:-quiet}
S=/tmp/$label-api.sock U=/tmp/$label-v.sock
w='head -c 131072 /dev/zero | tr "\0" x > /dev/ttyS0; echo done-writing'
con=$out/$label-run.console
args=(--api-sock $S --vsock cid=3,uds=$U --timeout 300)
[ "$app" = quiet ] && args+=(--append quiet)
node "$dir/dist/tsvmm.js" run "${args[@]}" >"$con" 2>"$out/$label-run.err" </dev/null &
rpid=$!
ok=0
for i in $(seq 40); do
  timeout 30 node "$dir/dist/tsvmm.js" exec --api-sock $S --timeout 20 -- true >/dev/null 2>&1 && { ok=1; break; }
  sleep 2
done
echo "$label agent up=$ok at $(date -u +%T), console $(wc -c <"$con")" | tee -a "$out/summary.txt"
t0=$(date +%s.%N)
timeout 200 node "$dir/dist/tsvmm.js" exec --api-sock $S --timeout 190 -- sh -c "$w" >"$out/$label-exec.out" 2>&1 &
epid=$!
last=-1 same=0 diag=0
while kill -0 $epid 2>/dev/null; do
  sleep 5
  n=$(wc -c <"$con")
  if [ "$n" = "$last" ]; then same=$((same+5)); else same=0; fi
  last=$n
  if [ $same -ge 20 ] && [ $diag -lt 2 ]; then
    diag=$((diag+1))
    echo "$label stall at $n B ($(date -u +%T)); diagnosis $diag" | tee -a "$out/summary.txt"
    curl -s --max-time 30 --unix-socket $S http://localhost/diagnosis >"$out/$label-diag$diag.json"
    [ $diag -ge 2 ] && break
    same=10
  fi
done
wait $epid; rc=$?
t1=$(date +%s.%N)
printf '%s exec rc=%s %.1fs console=%sB\n' "$label" "$rc" "$(awk "BEGIN{print $t1-$t0}")" "$(wc -c <"$con")" | tee -a "$out/summary.txt"
curl -s --max-time 30 --unix-socket $S http://localhost/diagnosis >"$out/$label-diag-end.json"
kill $rpid 2>/dev/null; wait $rpid
grep -a -n "DF\|double fault\|triple\|Kernel panic\|BUG\|Oops\|stack guard\|nobody cared" "$con" | head -5 | tee -a "$out/summary.txt"
