# Sourced by the set-up scripts: create .venv (once) and install asft with a CPU torch.
# torch==2.13.0 resolves to a small CPU wheel here; the library itself works with any torch >= 2.4.
# Versions are pinned by constraints.txt (what the tests ran on); pyproject keeps the library's ranges.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.asft-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Every dependency at the version in constraints.txt (the tested set); torch first, so that
  # nothing pulls a CUDA build.
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
