# Logging for recipe scripts: `log "message"` prints one line to stderr,
#   2026-11-03 14:02:11 (run.sh:57:main) message
# i.e. the time, the calling script, its line and function. Stderr keeps stdout free for
# data a stage may pipe on.

log() {
  local file=${BASH_SOURCE[1]:-$0}
  printf '%s (%s:%s:%s) %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${file##*/}" \
    "${BASH_LINENO[0]}" "${FUNCNAME[1]:-main}" "$*" >&2
}
