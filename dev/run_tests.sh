#!/usr/bin/env bash
# runs each test suite given as an argument (a shell command), shows its
# output, and ends with one line "N passed, N failed" summed over all suites.
# a suite that exits non-zero without reporting a failure counts as one.
set -u
total_pass=0
total_fail=0
for cmd in "$@"; do
  echo "=== $cmd"
  out=$(mktemp)
  bash -c "$cmd" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
  rm -f "$out"
  if [ -n "$line" ]; then
    p=${line%% passed*}
    f=${line#*, }; f=${f%% failed*}
  else
    p=0; f=0
  fi
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "suite '$cmd' exited with status $rc without reporting a failure: counted as one"
    f=1
  fi
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
