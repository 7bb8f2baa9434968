# Sourced by scripts/*: create .venv and install the project with its test extras when
# pyproject.toml changed since the last install. pip's chatter goes to .venv/install.log
# and is shown only when the install fails.
if [ ! -x .venv/bin/python ]; then
  apt="apt-get install python3 python3-venv"
  [ "$(id -u)" = 0 ] || apt="sudo $apt"
  if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 (3.11 or newer) is not installed: $apt" >&2; exit 1
  fi
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python 3.11 or newer is needed, python3 is $(python3 -V 2>&1): install a newer one (e.g. pyenv) first on PATH" >&2; exit 1
  fi
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "error: python3 cannot create virtual environments: $apt" >&2; exit 1
  fi
  if ! python3 -m venv .venv; then
    rm -rf .venv  # half a venv would make every later run fail differently
    echo "error: python3 -m venv .venv failed (see above)" >&2; exit 1
  fi
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "Installing the project into .venv (once; log in .venv/install.log) ..." >&2
  if ! { .venv/bin/python -m pip install -q --upgrade pip \
         && .venv/bin/python -m pip install -q -e '.[test,dev]'; } > .venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "Installing the project failed; the log above says why." >&2
    exit 1
  fi
  rm -f .venv/.installed-* && touch "$stamp"
fi
