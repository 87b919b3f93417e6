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

# compare TABLE_A TABLE_B NAME_A NAME_B: the servers' CPU per operation
# cell by cell from two `cairn bench` tables run with --server-pid
# (workloads matched by name, etcd's "put (add)" with "add"; load rows
# left out), each cell's ratio B/A, their geometric mean, and the CPU
# per operation over the timed cells of each (every cell's operations
# counted, as a whole run's CPU per write counts them). A whole run's
# CPU per write weights each cell by the operations it made, so the
# faster server's cheap cells at 64 connections count more for it; the
# ratio per cell compares like with like.
compare() {
    awk -F'|' -v na="$3" -v nb="$4" '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        FNR == 1 { f++ }
        $10 ~ /^ *[0-9]+ *$/ && $3 !~ /entries \(/ {
            w = trim($3); sub(/^put \(/, "", w); sub(/\)$/, "", w)
            k = w " " trim($4)
            if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            cpu[f, k] = trim($10); ops[f, k] = trim($5)
        }
        END {
            printf "| workload | connections | %s µs/op | %s µs/op | %s / %s |\n", na, nb, nb, na
            print "|---|---|---|---|---|"
            for (i = 1; i <= n; i++) {
                k = order[i]
                if (!((1, k) in cpu) || !((2, k) in cpu) || cpu[1, k] == 0) continue
                split(k, p, " ")
                r = cpu[2, k] / cpu[1, k]
                printf "| %s | %s | %d | %d | %.2f |\n", p[1], p[2], cpu[1, k], cpu[2, k], r
                lr += log(r); m++
                for (j = 1; j <= 2; j++) { t[j] += cpu[j, k] * ops[j, k]; o[j] += ops[j, k] }
            }
            if (m == 0) exit
            printf "\nGeometric mean of the %d ratios: %.2f. CPU per operation over these cells: %s %.0f µs, %s %.0f µs.\n", m, exp(lr / m), na, t[1] / o[1], nb, t[2] / o[2]
        }' "$1" "$2"
}
