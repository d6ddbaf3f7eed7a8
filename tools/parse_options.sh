# Kaldi-style option parsing for recipe scripts. Source it after declaring the options
# as shell variables with defaults, one per line with a comment:
#
#   stage=0          # first stage to run
#   use_gpu=false    # run on a GPU
#   help_message="Usage: $0 [options] <out-dir>"
#   . tools/parse_options.sh
#
# Then `--use-gpu true` and `--use-gpu=true` set use_gpu; `--help` / `-h` prints
# help_message and every option with its current value and comment, and exits 0.
# The first argument that does not start with `--` (or a lone `--`, which is dropped)
# ends option parsing; the remaining arguments are left in "$@".
#
# Which variables are options (help_message never is):
# 1. every `name=value` line at the start of a line, with a lower-case name, in the
#    calling script above the line that sources this file (read from BASH_SOURCE[1]);
#    when that script was itself sourced by another (a recipe's run.sh sourcing a shared
#    driver that declares the shared options and sources this file), also those of each
#    script up the chain, above its first line that sources a file; outermost first.
#    Their comments (`name=value  # comment`, or the `#` lines right above) are shown
#    by --help;
# 2. every other lower-case shell variable that the script (or a file it sourced, such
#    as path.sh) set before sourcing this file and did not export, i.e. that a fresh
#    `bash` with the same environment does not have. This run-time part catches options
#    declared in other ways and keeps working when the script file cannot be re-read.
# Environment variables (PATH, HOME, http_proxy...) are never options, so a flag cannot
# clobber them. Keep helper variables a script sets before sourcing this file
# upper-case (e.g. SQVAE_ROOT) so they are not offered as options.
#
# Errors (exit 1, message on stderr): an unknown option (the message lists the valid
# ones), a missing value, and a non-boolean value for an option whose current value
# is true or false (Kaldi's rule).

_po_chain=("${BASH_SOURCE[@]:1}")   # the calling script, then the one that sourced it, ...
[[ ${#_po_chain[@]} -gt 0 ]] || _po_chain=("$0")
_po_prog=${_po_chain[${#_po_chain[@]}-1]##*/}

# Fills _po_names: options in declaration order (from the script's text), then any
# others found only at run time, sorted; and _po_comment: name -> comment.
_po_discover() {
  # Locals are _po_-prefixed: compgen -v sees them, and the name filter must drop them.
  local _po_n _po_line _po_pending="" _po_c
  _po_runtime=()
  while IFS= read -r _po_n; do
    [[ $_po_n =~ ^[a-z][a-z0-9_]*$ ]] || continue
    [[ $_po_n == help_message ]] && continue
    [[ $(declare -p "$_po_n" 2>/dev/null) =~ ^declare\ -[a-zA-Z]*x ]] && continue
    _po_runtime+=("$_po_n")
  done < <(LC_ALL=C comm -23 <(compgen -v | LC_ALL=C sort -u) \
             <(env -u BASH_ENV bash --noprofile --norc -c 'compgen -v' | LC_ALL=C sort -u))

  declare -gA _po_comment=()
  _po_names=()
  local _po_i _po_script
  for (( _po_i = ${#_po_chain[@]} - 1; _po_i >= 0; _po_i-- )); do
    _po_script=${_po_chain[_po_i]}
    [[ -r $_po_script ]] || continue
    _po_pending=""
    while IFS= read -r _po_line || [[ -n $_po_line ]]; do
      [[ $_po_line == *parse_options.sh* && $_po_line != \#* ]] && break
      [[ $_po_line =~ ^[[:space:]]*(\.|source)[[:space:]] ]] && break
      if [[ $_po_line =~ ^[[:space:]]*#[[:space:]]?(.*)$ ]]; then
        _po_pending="${_po_pending:+$_po_pending }${BASH_REMATCH[1]}"
        continue
      fi
      if [[ $_po_line =~ ^([a-z][a-z0-9_]*)= ]]; then
        _po_n=${BASH_REMATCH[1]}
        _po_c=$_po_pending
        if [[ $_po_line =~ [[:space:]]#[[:space:]]?(.*)$ ]]; then _po_c=${BASH_REMATCH[1]}; fi
        if [[ $_po_n != help_message && -v $_po_n ]] && ! _po_in_list "$_po_n" "${_po_names[@]}"; then
          _po_names+=("$_po_n")
          _po_comment[$_po_n]=$_po_c
        fi
      fi
      _po_pending=""
    done < "$_po_script"
  done
  for _po_n in "${_po_runtime[@]}"; do
    _po_in_list "$_po_n" "${_po_names[@]}" || _po_names+=("$_po_n")
  done
}

_po_in_list() {
  local _po_x=$1 _po_y
  shift
  for _po_y in "$@"; do [[ $_po_x == "$_po_y" ]] && return 0; done
  return 1
}

_po_is_option() {
  _po_in_list "$1" "${_po_names[@]}"
}

_po_option_list() {
  local _po_n _po_out=""
  for _po_n in "${_po_names[@]}"; do _po_out+=" --${_po_n//_/-}"; done
  printf '%s' "${_po_out# }"
}

_po_help() {
  local _po_n
  if [[ -n ${help_message:-} ]]; then
    printf '%s\n\n' "$help_message"
  else
    printf 'Usage: %s [options]\n\n' "$_po_prog"
  fi
  printf 'Options (current value, then what it does):\n'
  for _po_n in "${_po_names[@]}"; do
    printf '  --%-24s %-14s %s\n' "${_po_n//_/-}" "'${!_po_n-}'" "${_po_comment[$_po_n]:-}"
  done
}

_po_fail() {
  printf '%s: error: %s\n' "$_po_prog" "$1" >&2
  exit 1
}

_po_discover

while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; break ;;
    --help | -h) _po_help; exit 0 ;;
    --*) _po_opt=${1%%=*} ;;
    *) break ;;
  esac
  _po_name=${_po_opt#--}
  _po_name=${_po_name//-/_}
  if ! [[ $_po_name =~ ^[a-z][a-z0-9_]*$ ]] || ! _po_is_option "$_po_name"; then
    _po_fail "unknown option '$_po_opt'. Valid options: $(_po_option_list) (see --help)"
  fi
  if [[ $1 == *=* ]]; then
    _po_value=${1#*=}
    shift
  elif [[ $# -lt 2 ]]; then
    _po_fail "option $_po_opt needs a value (e.g. $_po_opt VALUE or $_po_opt=VALUE)"
  elif [[ $2 == --* ]]; then
    _po_fail "option $_po_opt needs a value, but the next argument is the option '$2'; write $_po_opt=VALUE for a value starting with --"
  else
    _po_value=$2
    shift 2
  fi
  case "${!_po_name-}" in
    true | false)
      case "$_po_value" in
        true | false) ;;
        *) _po_fail "option $_po_opt takes true or false, not '$_po_value'" ;;
      esac
      ;;
  esac
  printf -v "$_po_name" '%s' "$_po_value"
done

unset -v _po_opt _po_value _po_name _po_chain _po_prog _po_runtime _po_names _po_comment
unset -f _po_discover _po_in_list _po_is_option _po_option_list _po_help _po_fail
true
