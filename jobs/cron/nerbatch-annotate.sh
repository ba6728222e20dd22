#!/usr/bin/env bash
# Run `nerbatch annotate` from cron: never two runs on one output at once, JSON-lines logs fit
# for a log file, exit codes a scheduler can act on, safe to re-run (it resumes; a finished
# output is a no-op).
#
#   nerbatch-annotate.sh INPUT OUTPUT [more `nerbatch annotate` options...]
#
# Environment:
#   NERBATCH        the nerbatch command            (default: nerbatch on PATH)
#   NERBATCH_MODEL  the model bundle                (default: export/minilm)
#   NERBATCH_LOCK   the flock file                  (default: OUTPUT.lock beside OUTPUT)
#
# Exit codes: 0 done (or already done), 1 error (see the log), 2 bad usage, 3 finished with
# rejected documents (only with --fail-on-reject), 75 skipped: another run holds the lock (cron
# will try again at its next slot), 143/130 stopped by SIGTERM/SIGINT (the next run resumes).
set -uo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 INPUT OUTPUT [nerbatch annotate options...]" >&2
  exit 2
fi
input=$1
output=${2%/}
shift 2
nerbatch=${NERBATCH:-nerbatch}
model=${NERBATCH_MODEL:-export/minilm}
lock=${NERBATCH_LOCK:-$output.lock}

log() {
  printf '{"time": "%s", "event": "%s", "message": "%s", "input": "%s", "output": "%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%S)" "$1" "$2" "$input" "$output" >&2
}

mkdir -p "$(dirname "$lock")"
exec 9>"$lock" || { log error "cannot open lock file $lock"; exit 1; }
if ! flock --nonblock 9; then
  log skipped "another run holds $lock"
  exit 75
fi

log start "nerbatch annotate starting"
"$nerbatch" --log-format json annotate "$input" "$output" --model "$model" "$@"
status=$?
case $status in
  0) log finished "done" ;;
  3) log rejects "finished with rejected documents (see $output/_rejects)" ;;
  *) log failed "nerbatch annotate exited $status; re-running resumes" ;;
esac
exit $status
