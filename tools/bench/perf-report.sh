#!/bin/bash
# Text summary of one `perf record` of a bench run (the diag scripts' common part): KVM exits and
# userspace exits by reason, context switches and cpu-clock samples per thread name, the hottest
# symbols. Expects the events kvm:kvm_exit, kvm:kvm_userspace_exit, sched:sched_switch and
# cpu-clock (with -g) in DATA.
#
#   tools/bench/perf-report.sh DATA LABEL > FILE
set -u
data=$1 label=$2
echo "== $label: events"
perf report -i "$data" --stdio --stats 2>/dev/null | grep -E 'SAMPLE|cpu-clock|kvm|sched' | head
echo "== $label: kvm_exit by reason"
perf script -i "$data" -F event,trace 2>/dev/null | awk '$1 ~ /kvm_exit/ { for (i = 2; i <= NF; i++) if ($i == "reason") { r = $(i + 1); c[r]++ } } END { for (r in c) print c[r], r }' | sort -rn | head -20
echo "== $label: kvm_userspace_exit by reason"
perf script -i "$data" -F event,trace 2>/dev/null | awk '$1 ~ /kvm_userspace_exit/ { $1 = ""; c[$0]++ } END { for (r in c) print c[r], r }' | sort -rn | head
echo "== $label: context switches away from, by thread name"
perf script -i "$data" -F comm,event 2>/dev/null | awk '$2 ~ /sched_switch/ { c[$1]++ } END { for (r in c) print c[r], r }' | sort -rn | head -15
# perf report has no event filter: print every event's section and keep cpu-clock's.
cpu() { awk '/^# Samples: .* of event / { keep = ($0 ~ /cpu-clock/) } keep && !/^#/ && !/^$/'; }
echo "== $label: cpu-clock samples by thread name"
perf report -i "$data" --stdio --no-children --sort comm -g none 2>/dev/null | cpu | head -15
echo "== $label: cpu-clock by symbol"
perf report -i "$data" --stdio --no-children --sort comm,dso,sym -g none 2>/dev/null | cpu | head -60
