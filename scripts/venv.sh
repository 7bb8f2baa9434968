# Sourced by scripts/*: create .venv and install the project with its test extras when
# pyproject.toml changed since the last install. pip's chatter goes to .venv/install.log
# and is shown only when the install fails.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
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
