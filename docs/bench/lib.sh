# Shared by the benchmark scripts in docs/bench (sourced, not run).

# wait_for WHAT SECONDS COMMAND...: runs COMMAND every 0.1 s until it
# succeeds; fails the benchmark, loudly, if it has not within SECONDS.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "docs/bench: $what not ready after ${secs}s; giving up" >&2
            exit 1
        fi
        sleep 0.1
    done
}

# The commit measured, as every figure in docs/benchmarks.md must name it;
# "+changes" when the work tree differs from it (such figures are not
# results: commit first).
commit() {
    local c
    c=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if ! git diff --quiet HEAD -- 2>/dev/null; then
        c="$c+changes"
    fi
    echo "$c"
}

# need COMMAND PACKAGE: installs the Debian package that has COMMAND when it
# is missing (a fresh machine has no OpenLDAP tools or dig).
need() {
    command -v "$1" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
