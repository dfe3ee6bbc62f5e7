#!/usr/bin/env sh
# A stand-in for a real resize, for README.md's `writ run` step: it shows the lease writ run
# holds for it (the environment writ run gives the command), then "resizes".
# Usage: writ run prod/db --intent "resize" -- examples/resize.sh 8
set -eu
capacity=${1:-8}
echo "resize: holding ${WRIT_LOCK_KEY:?run me under writ run} (fencing token $WRIT_FENCING_TOKEN)"
echo "resize: capacity -> $capacity"
