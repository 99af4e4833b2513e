#!/usr/bin/env bash
# Track every video of a folder in parallel workers; resumable (finished outputs are skipped); a failed file
# does not stop the others; results/report.json says what succeeded and what failed, and the exit status is
# non-zero if anything failed.
#
#   bash examples/scripts/track_folder.sh videos/ results/
set -euo pipefail
in_dir="${1:-examples/synthetic_head}"
out_dir="${2:-results}"
nphm-track "$in_dir" --out "$out_dir" --format .usd --workers 2
cat "$out_dir/report.json"
