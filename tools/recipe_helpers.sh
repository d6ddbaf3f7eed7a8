# Helpers for recipe scripts, sourced after tools/log.sh:
#   once MARKER CMD [ARG...]   run CMD unless the file MARKER exists; create MARKER when
#                              CMD succeeds (the .done markers of icefall / Kaldi recipes)
#   once_with TEXT MARKER CMD..  the same, MARKER recording TEXT (see below)
#   require_uint NAME...       each option NAME must be a non-negative integer
#   require_one_of NAME A B..  option NAME must be one of A B ...
# Errors are logged and exit the script (status 1).

once() {
  local marker=$1
  shift
  if [ -f "$marker" ]; then
    log "$marker exists: skipping"
    return 0
  fi
  "$@"
  mkdir -p "$(dirname "$marker")"
  touch "$marker"
}

require_uint() {
  local name
  for name in "$@"; do
    [[ ${!name} =~ ^[0-9]+$ ]] || { log "error: --${name//_/-} must be a non-negative integer, not '${!name}'"; exit 1; }
  done
}

require_one_of() {
  local name=$1 choice
  shift
  for choice in "$@"; do
    [ "${!name}" = "$choice" ] && return 0
  done
  log "error: --${name//_/-} must be one of: $*; not '${!name}'"
  exit 1
}

# once_with TEXT MARKER CMD [ARG...]: once, with MARKER holding TEXT (the options CMD ran
# with): a rerun with the same TEXT skips, a rerun with another one stops with an error
# (for commands that do not record their own options, as `sqvae-speech prepare` does).
once_with() {
  local text=$1 marker=$2
  shift 2
  if [ -f "$marker" ]; then
    if [ "$(< "$marker")" != "$text" ]; then
      log "error: $marker records '$(< "$marker")', not '$text': remove $(dirname "$marker")" \
        "and what was made from it to redo it"
      exit 1
    fi
    log "$marker exists: skipping"
    return 0
  fi
  "$@"
  mkdir -p "$(dirname "$marker")"
  echo "$text" > "$marker"
}
