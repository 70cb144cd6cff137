#!/usr/bin/env bash
# The burst demo: 300 jobs of 2 s land on an idle pool. The manager keeps one owned machine,
# grows the owned pool to its max and the simulated cloud to six machines at once, and when the
# queue is empty drains the cloud back to nothing. Prints the pools every few seconds and, at
# the end, the decisions with their reasons and what the cloud cost.
#
#   examples/burst/run.sh [SESSION_DIR]      (default: a new temporary directory)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
clobi=${CLOBI:-clobi}
session=${1:-$(mktemp -d -t clobi-burst-XXXXXX)}

$clobi session init "$session" >/dev/null
cat "$here/pools.toml" >>"$session/clobi.toml"
export CLOBI_SESSION=$session
echo "session: $session"

$clobi submit -n 300 --name 'burst-{index}' -- sleep 2 >/dev/null
echo "queued 300 jobs of 2 s; starting the manager"
$clobi manager >"$session/manager.log" 2>&1 &
manager=$!
trap 'kill -TERM $manager 2>/dev/null; wait $manager 2>/dev/null || true' EXIT

show() { echo "--- $(date +%T)"; $clobi pool ls; }
until [ "$($clobi ls --state queued --state running --json --limit 1 | tr -d '[:space:]')" = "[]" ]; do
  show; sleep 4
done
echo "all jobs ended: $($clobi wait --timeout 1 | tail -1)"
echo "waiting for the cloud to drain back to nothing"
until $clobi instances --pool cloud --json | grep -q '^\[\]$'; do show; sleep 4; done
show

echo "done; letting the owned pool go too, so that nothing is left running"
$clobi pool scale owned --min 0 --max 0 >/dev/null
until $clobi instances --json | grep -q '^\[\]$'; do sleep 1; done

echo; echo "decisions:"
$clobi events --limit 1000 | grep manager_ || true
echo; $clobi pool show cloud | sed -n '1,6p'
