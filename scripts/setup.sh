#!/usr/bin/env bash
# Everything a fresh machine needs for Twinline: a virtualenv with the project and its dev
# tools. Idempotent: running it again only installs what is missing.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Twinline needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 2
fi

# System packages (Debian) the test suite and demo use, installed only when missing.
need_apt=()
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "setup: please install the Debian packages: ${need_apt[*]}" >&2
        exit 1
    fi
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "setup: $("$VENV/bin/twin" --version) ready in $VENV"
