#!/usr/bin/env bash
# One-time set-up: espeak-ng and fluidsynth (for the demo data), the virtual environment .venv and the package.
# Running it again is fast and changes nothing while setup.py and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

# espeak-ng speaks the demo corpus; fluidsynth renders the GM soundfont's instruments for the music tasks
# (examples/m2d/demo_music.py)
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v fluidsynth >/dev/null 2>&1 || missing+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || missing+=(fluid-soundfont-gm)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing ${missing[*]} with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "[setup] missing: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})." >&2
        echo "[setup] they are only needed to synthesise the demo corpus and the music tasks." >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.maskssl-installed
want=$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[setup] .venv is up to date"
    exit 0
fi

echo "[setup] installing torch, fairseq-fixed and the plugin into .venv (first time: about 5 minutes)"
.venv/bin/python -m pip install -q --upgrade "pip<25" setuptools wheel
# fairseq-fixed compiles its extensions against the pinned torch, so torch goes in first.
.venv/bin/python -m pip install -q -c constraints.txt torch torchaudio torchvision
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/python -c "import fairseq, torchaudio, timm; print('[setup] fairseq', fairseq.__version__, '| torch', __import__('torch').__version__, '| torchaudio', torchaudio.__version__)"
echo "$want" > "$stamp"
