# Sourced by every recipe's run.sh (after it has changed into its own directory): puts the
# repository's virtual environment on PATH so that the `sqvae-speech` command (the
# package, installed with `pip install -e`) is found; no PYTHONPATH games. SQVAE_ROOT
# (the repository root) defaults to the directory above this file; set it in the
# environment to run a copy of a recipe from elsewhere.
SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [ -x "$SQVAE_ROOT/.venv/bin/sqvae-speech" ]; then
  export PATH="$SQVAE_ROOT/.venv/bin:$PATH"
fi
if ! command -v sqvae-speech > /dev/null; then
  echo "path.sh: the sqvae-speech command is not installed: run 'make install' in $SQVAE_ROOT" \
    "(or activate an environment where the package is installed)" >&2
  return 1
fi
export PYTHONUNBUFFERED=1
