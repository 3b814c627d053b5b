#!/usr/bin/env bash
# tests/check-scripts.sh — conventions of the project's shell scripts that shellcheck does not know.
#
# Under `set -o pipefail`, piping a command into `grep -q PATTERN` fails at random: grep exits at
# its first match, the command dies of SIGPIPE (exit 141) writing its next line, and pipefail turns
# that into a failure
# (`set -e` then ends the script silently). Readers that stop early (grep -q/--quiet/-m, head)
# must not end a pipeline whose status is checked; use `grep PATTERN >/dev/null`, which reads all.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bad=0
while IFS= read -r f; do
  grep -q 'pipefail' "$f" || continue
  # a pipe, then grep with -q (alone or among other short flags) or --quiet
  # (comment lines, like the ones above, are not code)
  if hits=$(grep -nE '\|[[:space:]]*grep[[:space:]]+(-[A-Za-z]*q[A-Za-z]*|--quiet)([[:space:]]|$)' "$f" \
              | grep -vE '^[0-9]+:[[:space:]]*#'); then
    printf '%s: a pipe into grep -q under pipefail (use grep ... >/dev/null, which reads all input):\n%s\n' "$f" "$hits" >&2
    bad=1
  fi
done < <(git ls-files '*.sh' '.ci/run' 'tests/run.sh')
(( bad == 0 )) && echo "check-scripts: no early-exiting reader after a pipe in pipefail scripts"
exit "$bad"
