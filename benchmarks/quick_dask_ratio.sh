#!/usr/bin/env bash
# `winnow benchmark --quick` sequentially, then on 2 local Dask workers, each in a fresh
# WINNOW_HOME, timed by the shell; then compares the two `benchmark` tables row by row.
# Issue 13's target: the Dask run <= 0.65x the sequential wall time, identical tables.
# Not a test: ~8 minutes on an idle 2-core machine.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/winnow-quick-ratio}
mkdir -p "$out"
for w in 0 2; do
  home=$out/home-w$w; rm -rf "$home"; mkdir -p "$home"
  args=(); [ "$w" -gt 0 ] && args=(--workers "$w")
  # wall, CPU (user + system of the command and every child it reaped: the Prefect server, the
  # Dask nannies and workers) and exit status
  /usr/bin/time -f "%e %U %S %x" -o "$out/w$w.time" env WINNOW_HOME="$home" \
      .venv/bin/winnow benchmark --quick "${args[@]}" > "$out/w$w.log" 2>&1
  read -r wall user sys rc < <(tail -n 1 "$out/w$w.time")  # after a "Command exited ..." line
  echo "workers=$w rc=$rc wall=$wall cpu=$(echo "$user + $sys" | bc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
  WINNOW_HOME=$home .venv/bin/winnow sql "SELECT dataset, noise, rate, seed, scorer, round(auroc, 6) a,
    round(recall_at_k, 6) r FROM benchmark ORDER BY ALL" --format csv > "$out/w$w.csv"
done
cmp "$out/w0.csv" "$out/w2.csv" && echo "benchmark tables identical ($(($(wc -l < "$out/w0.csv") - 1)) rows)"
