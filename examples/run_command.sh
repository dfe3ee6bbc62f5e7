#!/usr/bin/env bash
# `writ run` holds write authority while a shell command runs, and stops the command if the
# lease is lost.   Usage: examples/run_command.sh   (needs WRIT_ADMIN_TOKEN; see README.md)
set -euo pipefail
: "${WRIT_ADMIN_TOKEN:?set WRIT_ADMIN_TOKEN to the token writ serve was first started with}"
export WRIT_URL=${WRIT_URL:-http://127.0.0.1:7421}
WRIT=${WRIT:-writ}
suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
resource="examples/$suffix/batch"

token_of() {  # register an agent with the admin token; print its token
  WRIT_TOKEN=$WRIT_ADMIN_TOKEN $WRIT principal add "$1-$suffix" --kind agent --json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}
batch=$(token_of batch-runner)
other=$(token_of deploy-bot)

# The batch's command runs until this script lets it finish (a file appears), so each step
# below happens while batch-runner holds the resource, however slow the machine is.
finish=$(mktemp -u "${TMPDIR:-/tmp}/writ-example-$suffix.XXXXXX")
trap 'touch "$finish"; rm -f "$finish"' EXIT

# 1. batch-runner holds the resource while its command runs; the command sees its lease.
WRIT_TOKEN=$batch FINISH=$finish $WRIT run "$resource" --intent "nightly batch" --ttl 5 -- \
  sh -c 'echo "batch: holding $WRIT_LOCK_KEY (fencing token $WRIT_FENCING_TOKEN)"
         until [ -e "$FINISH" ]; do sleep 0.1; done; echo "batch: done"' &
runner=$!
until WRIT_TOKEN=$other $WRIT who "$resource" | grep -q batch-runner; do sleep 0.2; done

# 2. deploy-bot, meanwhile, is refused at once (--wait 0): writ run exits 1 and never starts it.
if WRIT_TOKEN=$other $WRIT run "$resource" --intent "deploy" --wait 0 -- echo "deploy: ran"; then
  echo "unexpected: deploy ran while batch held $resource"; exit 1
else
  echo "deploy: refused while batch-runner holds $resource (exit $?)"
fi

# 3. With --wait, deploy-bot queues, and runs as soon as batch-runner's command exits.
WRIT_TOKEN=$other $WRIT run "$resource" --intent "deploy" --wait 30 -- \
  sh -c 'echo "deploy: holding $WRIT_LOCK_KEY after the batch"' &
deploy=$!
waiters() {
  WRIT_TOKEN=$other $WRIT status "$resource" --json |
    python3 -c 'import json, sys; print(sum(l["waiters"] for l in json.load(sys.stdin)["leases"]))'
}
until [ "$(waiters)" = 1 ]; do sleep 0.2; done
echo "deploy: queued behind batch-runner"
touch "$finish"  # the batch's command finishes now
wait "$runner"
wait "$deploy"
