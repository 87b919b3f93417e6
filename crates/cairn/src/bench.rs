//! `cairn bench`: a load generator for any LDAP server, so Cairn and a
//! reference server (OpenLDAP's slapd) are measured by the same client in
//! the same run (see docs/benchmarks.md and docs/bench/run).
//!
//! Phases, each optional:
//! - **load**: adds `--entries` host entries `cn=host-N,<base>` over
//!   `--load-connections` parallel connections (each its own slice);
//! - **search**: for each connection count, every connection runs
//!   equality searches for a random host for `--duration` seconds,
//!   alternating `(cn=host-N)` and `(netbootGUID=…)`, each of which must
//!   return exactly that one entry;
//! - **modify**: the same with a `replace: description` on a random host;
//! - **add**: new entries;
//! - **pull**: `Config.Pull` over gRPC (`--grpc`, one channel per
//!   connection) by the MAC of a random host: the host's effective
//!   configuration, inheritance resolved per request. Against etcd
//!   (`--etcd`), the same per-host configuration stored as one key per host
//!   (JSON of the effective settings with their sources, loaded first) and
//!   read with serializable gets.
//!
//! It reports operations per second and p50/p99 latency per phase, and,
//! when `--server-pid` names the server's processes, their resident memory
//! (read from /proc/PID/status) and the CPU they spent per operation in
//! that phase (user and system, from /proc/PID/stat): what a phase costs
//! the server, where a site's CPU per write over a whole run mixes phases
//! whose writes cost very different amounts. Output is one Markdown table
//! row per measurement.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ldap3::{Ldap, Mod, Scope};

use crate::client::{self, Auth};

/// What to run.
pub struct BenchArgs {
    /// LDAP servers to spread connections over (round robin); empty: the
    /// global --url.
    pub urls: Vec<String>,
    /// etcd endpoints: benchmark etcd's puts instead of LDAP.
    pub etcd: Vec<String>,
    pub base: String,
    pub entries: usize,
    pub load: bool,
    pub load_connections: usize,
    pub connections: Vec<usize>,
    pub duration: Duration,
    pub workloads: Vec<String>,
    pub label: String,
    /// The server's processes (one for Cairn, one per member for etcd).
    pub server_pid: Vec<u32>,
    /// gRPC addresses (host:port) for the pull workload.
    pub grpc: Vec<String>,
    /// LDAP servers the converge workload waits for.
    pub readers: Vec<String>,
}

fn host_mac(n: usize) -> String {
    format!(
        "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
        (n >> 24) & 0xff,
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// What etcd stores for host `n` in the pull comparison: the effective
/// configuration Cairn computes for it, as JSON with sources.
fn etcd_config(n: usize, base: &str) -> String {
    format!(
        "{{\"host\":\"cn=host-{n},{base}\",\"settings\":{{\"ntp.servers\":{{\"value\":\"10.0.0.1,10.0.0.2\",\"source\":\"cn=host-{n},{base}\"}},\"vmotion.vlan\":{{\"value\":\"{}\",\"source\":\"cn=host-{n},{base}\"}}}}}}",
        n % 4000
    )
}

/// The host entry number `n`: deterministic attributes.
pub fn host_guid(n: usize) -> String {
    format!(
        "4c4c4544-{:04x}-{:04x}-8052-{:012x}",
        (n >> 16) & 0xffff,
        n & 0xffff,
        n
    )
}

fn host_attrs(n: usize) -> Vec<(String, HashSet<String>)> {
    let one = |v: String| HashSet::from([v]);
    vec![
        ("objectClass".into(), one("cairnHost".into())),
        ("cn".into(), one(format!("host-{n}"))),
        ("netbootGUID".into(), one(host_guid(n))),
        ("macAddress".into(), one(host_mac(n))),
        (
            "ipHostNumber".into(),
            one(format!(
                "10.{}.{}.{}",
                (n >> 16) & 0xff,
                (n >> 8) & 0xff,
                n & 0xff
            )),
        ),
        (
            "cairnSetting".into(),
            HashSet::from([
                format!("vmotion.vlan={}", n % 4000),
                "ntp.servers=10.0.0.1,10.0.0.2".to_string(),
            ]),
        ),
        ("description".into(), one(format!("bench host {n}"))),
    ]
}

/// A small deterministic PRNG (xorshift64*), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Latencies of one measurement, in microseconds.
struct Stats {
    lat_us: Vec<u32>,
    elapsed: Duration,
    errors: usize,
    /// The server's CPU time over the timed span, when its processes are
    /// known.
    cpu: Option<Duration>,
}

impl Stats {
    /// One table row. `rss`: the server's resident memory after the phase.
    fn row(&mut self, label: &str, workload: &str, conns: usize, rss: Option<u64>) -> String {
        self.lat_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.lat_us.is_empty() {
                return 0.0;
            }
            let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
            self.lat_us[i] as f64 / 1000.0
        };
        let ops = self.lat_us.len() as f64 / self.elapsed.as_secs_f64();
        let done = self.lat_us.len();
        format!(
            "| {label} | {workload} | {conns} | {ops:.0} | {:.2} | {:.2} | {} | {} | {} |",
            pct(0.5),
            pct(0.99),
            self.errors,
            rss.map(|k| format!("{} MiB", k / 1024))
                .unwrap_or_else(|| "-".into()),
            self.cpu
                .filter(|_| done > 0)
                .map(|t| format!("{:.0}", t.as_secs_f64() * 1e6 / done as f64))
                .unwrap_or_else(|| "-".into())
        )
    }
}

/// Linux's USER_HZ, the unit of the CPU times in /proc/PID/stat: 100 on
/// every architecture with a stable user ABI that Cairn builds for.
const USER_HZ: u64 = 100;

/// The CPU time (user and system, all threads) process `pid` has spent.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields
    // after its closing one. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 1000 / USER_HZ))
}

/// What the server's processes hold and have spent, summed; None when
/// none was named or one is gone.
#[derive(Clone, Copy)]
struct Server<'a>(&'a [u32]);

impl Server<'_> {
    fn sum(self, of: impl Fn(u32) -> Option<u64>) -> Option<u64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.iter().map(|&p| of(p)).sum()
    }

    fn rss_kib(self) -> Option<u64> {
        self.sum(rss_kib)
    }

    fn cpu(self) -> Option<Duration> {
        self.sum(|p| cpu_time(p).map(|t| t.as_millis() as u64))
            .map(Duration::from_millis)
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn connections(urls: &[String], auth: &Auth, n: usize) -> anyhow::Result<Vec<Ldap>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(client::connect(&urls[i % urls.len()], auth).await?);
    }
    Ok(out)
}

/// Generated client for etcd's KV.Put (proto/bench/etcd_kv.proto).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// Puts to etcd over `n_conns` gRPC channels for the duration: `add`
/// writes a new key each time, `modify` overwrites one of `entries` keys;
/// values are the size of the corresponding LDAP request's payload.
async fn run_etcd(args: &BenchArgs, workload: &str, n_conns: usize) -> anyhow::Result<Stats> {
    let mut clients = vec![];
    for i in 0..n_conns {
        let ep = &args.etcd[i % args.etcd.len()];
        let channel = tonic::transport::Endpoint::from_shared(ep.clone())?
            .connect()
            .await
            .with_context(|| format!("cannot connect to etcd at {ep}"))?;
        clients.push(etcd::kv_client::KvClient::new(channel));
    }
    if workload == "pull" {
        return etcd_gets(args, clients).await;
    }
    let add = workload == "add";
    timed(
        Server(&args.server_pid),
        clients,
        args.entries,
        args.duration,
        move |mut kv, c| async move {
            let Call {
                worker: i,
                k,
                host: n,
            } = c;
            let (key, value) = if add {
                (
                    format!("/bench/w-{n_conns}-{i}-{k}"),
                    format!("objectClass=cairnHost cn=w-{n_conns}-{i}-{k}"),
                )
            } else {
                (
                    format!("/bench/host-{n}"),
                    format!("bench host {n} rev {k}"),
                )
            };
            let req = etcd::PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                ..Default::default()
            };
            let ok = kv.put(req).await.is_ok();
            (kv, ok)
        },
    )
    .await
}

/// Puts every host's configuration once (per process), then measures
/// serializable gets of random hosts.
async fn etcd_gets(
    args: &BenchArgs,
    clients: Vec<etcd::kv_client::KvClient<tonic::transport::Channel>>,
) -> anyhow::Result<Stats> {
    static LOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if args.load && !LOADED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        let per = args.entries.div_ceil(clients.len());
        let mut tasks = vec![];
        for (i, mut kv) in clients.clone().into_iter().enumerate() {
            let range = (i * per)..((i + 1) * per).min(args.entries);
            let base = args.base.clone();
            tasks.push(tokio::spawn(async move {
                for n in range {
                    kv.put(etcd::PutRequest {
                        key: format!("/config/host-{n}").into_bytes(),
                        value: etcd_config(n, &base).into_bytes(),
                        ..Default::default()
                    })
                    .await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    timed(
        Server(&args.server_pid),
        clients,
        args.entries,
        args.duration,
        |mut kv, c| async move {
            let req = etcd::RangeRequest {
                key: format!("/config/host-{}", c.host).into_bytes(),
                serializable: true,
                ..Default::default()
            };
            let ok = kv
                .range(req)
                .await
                .is_ok_and(|r| r.get_ref().kvs.len() == 1);
            (kv, ok)
        },
    )
    .await
}

/// `Config.Pull` of random hosts over `n_conns` gRPC channels.
async fn run_pulls(args: &BenchArgs, n_conns: usize) -> anyhow::Result<Stats> {
    use cairn_proto::pb;
    let mut clients = vec![];
    for i in 0..n_conns {
        let addr = &args.grpc[i % args.grpc.len()];
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to gRPC at {addr}"))?;
        clients.push(pb::config_client::ConfigClient::new(channel));
    }
    timed(
        Server(&args.server_pid),
        clients,
        args.entries,
        args.duration,
        |mut client, c| async move {
            let req = pb::PullRequest {
                identity: Some(pb::Identity {
                    macs: vec![host_mac(c.host)],
                    ..Default::default()
                }),
                version: String::new(),
            };
            let ok = client
                .pull(req)
                .await
                .is_ok_and(|r| r.get_ref().settings.len() >= 2);
            (client, ok)
        },
    )
    .await
}

async fn load(args: &BenchArgs, urls: &[String], auth: &Auth) -> anyhow::Result<Stats> {
    let conns = connections(urls, auth, args.load_connections.max(1)).await?;
    let per = args.entries.div_ceil(conns.len());
    let server = Server(&args.server_pid);
    let start = Instant::now();
    let cpu = server.cpu();
    let mut tasks = vec![];
    for (i, mut ldap) in conns.into_iter().enumerate() {
        let base = args.base.clone();
        let range = (i * per)..((i + 1) * per).min(args.entries);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(range.len());
            let mut errors = 0;
            for n in range {
                let t = Instant::now();
                let attrs = host_attrs(n);
                let attrs: Vec<(&str, HashSet<&str>)> = attrs
                    .iter()
                    .map(|(a, v)| (a.as_str(), v.iter().map(String::as_str).collect()))
                    .collect();
                match ldap.add(&format!("cn=host-{n},{base}"), attrs).await {
                    Ok(r) if r.rc == 0 => lat.push(t.elapsed().as_micros() as u32),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    collect(tasks, start, server, cpu).await
}

async fn run_workload(
    args: &BenchArgs,
    urls: &[String],
    auth: &Auth,
    workload: &str,
    n_conns: usize,
) -> anyhow::Result<Stats> {
    let conns = connections(urls, auth, n_conns).await?;
    let base = args.base.clone();
    let workload = workload.to_string();
    timed(
        Server(&args.server_pid),
        conns,
        args.entries,
        args.duration,
        move |mut ldap: Ldap, c| {
            let (base, workload) = (base.clone(), workload.clone());
            async move {
                let Call {
                    worker: i,
                    k,
                    host: n,
                } = c;
                let ok = if workload == "add" {
                    // Unique across runs with other connection counts.
                    let cn = format!("w-{n_conns}-{i}-{k}");
                    let dn = format!("cn={cn},{base}");
                    ldap.add(
                        &dn,
                        vec![
                            ("objectClass", HashSet::from(["cairnHost"])),
                            ("cn", HashSet::from([cn.as_str()])),
                        ],
                    )
                    .await
                    .is_ok_and(|r| r.rc == 0)
                } else if workload == "modify" {
                    let dn = format!("cn=host-{n},{base}");
                    let desc = format!("bench host {n} rev {k}");
                    ldap.modify(
                        &dn,
                        vec![Mod::Replace("description", HashSet::from([desc.as_str()]))],
                    )
                    .await
                    .is_ok_and(|r| r.rc == 0)
                } else {
                    let filter = if k.is_multiple_of(2) {
                        format!("(cn=host-{n})")
                    } else {
                        format!("(netbootGUID={})", host_guid(n))
                    };
                    ldap.search(&base, Scope::Subtree, &filter, vec!["cn"])
                        .await
                        .is_ok_and(|r| r.0.len() == 1 && r.1.rc == 0)
                };
                (ldap, ok)
            }
        },
    )
    .await
}

/// Convergence: one write per [`CONVERGE_EVERY`] at `writer` (a
/// `replace: description` of the bench container), each timed from its
/// acknowledgement until every reader returns it, polling each reader
/// every millisecond. A write not seen everywhere within 30 s counts as an
/// error and the run goes on.
async fn run_converge(args: &BenchArgs, writer: &str, auth: &Auth) -> anyhow::Result<Stats> {
    const CONVERGE_EVERY: Duration = Duration::from_millis(100);
    const GIVE_UP: Duration = Duration::from_secs(30);
    let mut w = client::connect(writer, auth).await?;
    let mut readers = vec![];
    for r in &args.readers {
        readers.push(client::connect(r, auth).await?);
    }
    // The container: the other workloads write only below it.
    let dn = args.base.clone();
    let nonce = std::process::id();
    let mut stats = Stats {
        lat_us: vec![],
        elapsed: Duration::ZERO,
        errors: 0,
        cpu: None,
    };
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < args.duration {
        i += 1;
        let value = format!("converge {nonce} {i}");
        let r = w
            .modify(
                &dn,
                vec![Mod::Replace("description", HashSet::from([value.as_str()]))],
            )
            .await?;
        if r.rc != 0 {
            stats.errors += 1;
            continue;
        }
        let acked = Instant::now();
        let filter = format!("(description={value})");
        let mut seen = vec![false; readers.len()];
        while seen.iter().any(|s| !s) && acked.elapsed() < GIVE_UP {
            for (k, rd) in readers.iter_mut().enumerate() {
                if !seen[k] {
                    let found = rd.search(&dn, Scope::Base, &filter, vec!["1.1"]).await?.0;
                    seen[k] = !found.is_empty();
                }
            }
            if seen.iter().any(|s| !s) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if seen.iter().all(|s| *s) {
            let us = acked.elapsed().as_micros();
            stats.lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        } else {
            stats.errors += 1;
        }
        let next = acked + CONVERGE_EVERY;
        tokio::time::sleep_until(next.into()).await;
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// One call of a timed run: the worker making it, its call number (from
/// 1), and a random host (below `--entries`).
#[derive(Clone, Copy)]
struct Call {
    worker: usize,
    k: u64,
    host: usize,
}

/// Runs `op` back to back on every client until `duration` has passed,
/// one task per client, each with its own deterministic RNG. `op` hands
/// the client back with whether the call succeeded; successful calls count
/// as latencies, the others as errors.
async fn timed<C, F, Fut>(
    server: Server<'_>,
    clients: Vec<C>,
    entries: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<Stats>
where
    C: Send + 'static,
    F: Fn(C, Call) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (C, bool)> + Send,
{
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let cpu = server.cpu();
    let mut tasks = vec![];
    for (worker, mut client) in clients.into_iter().enumerate() {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
            let (mut lat, mut errors, mut k) = (vec![], 0usize, 0u64);
            while Instant::now() < deadline {
                k += 1;
                let call = Call {
                    worker,
                    k,
                    host: rng.below(entries),
                };
                let t = Instant::now();
                let (back, ok) = op(client, call).await;
                client = back;
                if ok {
                    lat.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    collect(tasks, start, server, cpu).await
}

type Worker = tokio::task::JoinHandle<(Vec<u32>, usize)>;

/// Waits for the workers and merges their latencies and error counts;
/// `cpu`: the server's CPU time when they started.
async fn collect(
    tasks: Vec<Worker>,
    start: Instant,
    server: Server<'_>,
    cpu: Option<Duration>,
) -> anyhow::Result<Stats> {
    let mut stats = Stats {
        lat_us: vec![],
        elapsed: Duration::ZERO,
        errors: 0,
        cpu: None,
    };
    for t in tasks {
        let (lat, errors) = t.await?;
        stats.lat_us.extend(lat);
        stats.errors += errors;
    }
    stats.elapsed = start.elapsed();
    stats.cpu = server
        .cpu()
        .zip(cpu)
        .map(|(end, start)| end.saturating_sub(start));
    Ok(stats)
}

/// Runs the benchmark and prints the table.
pub async fn run(args: BenchArgs, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    if args.entries == 0 {
        bail!("--entries must be at least 1");
    }
    println!(
        "| server | workload | connections | ops/s | p50 ms | p99 ms | errors | server RSS | server CPU µs/op |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let rss = || Server(&args.server_pid).rss_kib();
    if !args.etcd.is_empty() {
        for w in &args.workloads {
            for &c in &args.connections {
                let mut s = run_etcd(&args, w, c).await?;
                let what = if w == "pull" {
                    "get (pull)".to_string()
                } else {
                    format!("put ({w})")
                };
                println!("{}", s.row(&args.label, &what, c, rss()));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let urls: Vec<String> = if args.urls.is_empty() {
        vec![url.to_string()]
    } else {
        args.urls.clone()
    };
    if args.load {
        // The container; it may exist already.
        let mut ldap = client::connect(&urls[0], auth).await?;
        let ou = args
            .base
            .split(',')
            .next()
            .and_then(|r| r.strip_prefix("ou="))
            .context("--base must start with ou=")?
            .to_string();
        let _ = ldap
            .add(
                &args.base,
                vec![
                    ("objectClass", HashSet::from(["organizationalUnit"])),
                    ("ou", HashSet::from([ou.as_str()])),
                ],
            )
            .await;
        let mut s = load(&args, &urls, auth).await?;
        println!(
            "{}",
            s.row(
                &args.label,
                &format!(
                    "add {} entries ({:.1} s)",
                    args.entries,
                    s.elapsed.as_secs_f64()
                ),
                args.load_connections,
                rss()
            )
        );
    }
    for w in &args.workloads {
        for &c in &args.connections {
            let mut s = if w == "pull" {
                run_pulls(&args, c).await?
            } else if w == "converge" {
                // One writer; the connection count does not apply.
                let mut s = run_converge(&args, &urls[0], auth).await?;
                println!(
                    "{}",
                    s.row(&args.label, "converge (write to all readers)", 1, rss())
                );
                break;
            } else {
                run_workload(&args, &urls, auth, w, c).await?
            };
            println!("{}", s.row(&args.label, w, c, rss()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_valid_and_distinct() {
        let a = host_guid(1);
        let b = host_guid(65_537);
        assert_ne!(a, b);
        for g in [a, b, host_guid(99_999)] {
            assert_eq!(g.len(), 36, "{g}");
            assert!(g.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        }
    }

    #[test]
    fn percentiles() {
        let mut s = Stats {
            lat_us: (1..=100).map(|i| i * 1000).collect(),
            elapsed: Duration::from_secs(1),
            errors: 0,
            cpu: Some(Duration::from_millis(250)),
        };
        let row = s.row("x", "search", 1, None);
        assert!(
            row.contains("| 100 | 50.00 | 99.00 |") || row.contains("| 100 | 51.00 | 99.00 |"),
            "{row}"
        );
        // 250 ms of the server's CPU over 100 operations.
        assert!(row.ends_with("| - | 2500 |"), "{row}");
    }

    #[test]
    fn cpu_time_reads_this_process() {
        // Spin until this process has spent CPU time that the clock
        // ticks of /proc can see; it must read more than before.
        let me = std::process::id();
        let before = cpu_time(me).expect("this process's /proc/PID/stat");
        let t = Instant::now();
        let mut x = 0u64;
        while cpu_time(me).expect("stat") <= before {
            x = x.wrapping_add(std::hint::black_box(1));
            assert!(t.elapsed() < Duration::from_secs(30), "no CPU time seen");
        }
        assert!(Server(&[me]).cpu().is_some());
        assert_eq!(Server(&[]).cpu(), None);
        assert_eq!(Server(&[me, u32::MAX]).rss_kib(), None, "a process gone");
        std::hint::black_box(x);
    }
}
