#!/bin/sh
# scripts/bench_gpu.py on one GPU in at most 5 minutes: no cell starts after 200 s (--budget-s),
# and at 290 s SIGTERM stops it with the table of the cells done so far printed.
exec timeout -k 20 290 python "$(dirname "$0")/bench_gpu.py" "$@"
