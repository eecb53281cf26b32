# Sourced by scripts/*.sh: find interpreters, install the Fashion-MNIST package, build cached venvs.
# Venvs live outside the clone in ${OCAP_CI_CACHE:-$HOME/.cache/ocap-ci}, keyed by a hash of
# setup.cfg, the constraints, the interpreter and the extras; a half-built one is rebuilt.

find_python() {  # find_python 3.11 -> path of an interpreter of that version, or nothing
    local v=$1 c
    for c in "python$v" "$(pyenv root 2>/dev/null)/versions/$v"*/bin/python "/usr/bin/python$v"; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

ensure_fashion_mnist() {
    local d=${OCAP_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
    [ -f "$d/t10k-labels-idx1-ubyte.gz" ] && return 0
    echo "installing the Debian package dataset-fashion-mnist" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
}

pip_install() {  # pip_install VENV ARGS... -> pip's exit status; its warnings about index folders a
    # package is absent from are dropped, the rest goes to stderr
    "$1/bin/python" -m pip install -q --disable-pip-version-check "${@:2}" 2>&1 \
        | { grep -v "is ignored: it is neither" || true; } >&2
    return "${PIPESTATUS[0]}"
}

make_venv() {  # make_venv PYTHON EXTRAS -> prints the venv path
    local py=$1 extras=$2 key V
    key=$( (cat setup.cfg .ci/constraints.txt; "$py" -VV; echo "$extras") | sha256sum | cut -c1-12)
    V="${OCAP_CI_CACHE:-$HOME/.cache/ocap-ci}/venv-$key"
    mkdir -p "$(dirname "$V")"
    # one builder at a time (the demo, the tests and bin/* may start together): the others wait
    exec 9>"$V.lock" && flock 9
    if [ ! -e "$V/.complete" ]; then
        echo "building $V ($("$py" -V), extras: $extras)" >&2
        rm -rf "$V" && "$py" -m venv "$V"
        # the requirements of setup.cfg (its install_requires and these extras), read by the venv's own
        # Python so that their environment markers apply; Python 3.6's pip (18) predates manylinux2014
        "$py" - "$extras" > "$V/requirements.txt" <<'PY'
import configparser, sys
c = configparser.ConfigParser()
c.read("setup.cfg")
lines = lambda v: [r.strip() for r in v.splitlines() if r.strip()]
extras = [e for e in sys.argv[1].split(",") if e]
print("\n".join(lines(c["options"]["install_requires"])
                + [r for e in extras for r in lines(c["options.extras_require"][e])]))
PY
        if "$V/bin/python" -c "import sys; sys.exit(sys.version_info >= (3, 7))"; then
            pip_install "$V" "pip>=21.3,<22"
        fi
        pip_install "$V" -c .ci/constraints.txt -r "$V/requirements.txt" && touch "$V/.complete"
    fi
    flock -u 9
    [ -e "$V/.complete" ] || { echo "venv $V failed to build" >&2; return 1; }
    echo "$V"
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY311=$(find_python 3.11) || { echo "Python 3.11 is needed (python3.11 on PATH or pyenv)" >&2; exit 1; }
