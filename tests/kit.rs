//! The test kit: start `cairnd dev` on a free port and a temporary data
//! directory, wait until it answers, kill it (gracefully or with SIGKILL)
//! and start it again on the same data.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "cn=admin,dc=example,dc=com";
pub const PASSWORD: &str = "test-admin-password";
pub const SUFFIX: &str = "dc=example,dc=com";
pub const PROD_A: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";

/// Where cargo put the workspace's binaries (next to this test's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (cargo build --bins)",
        p.display()
    );
    p
}

/// Ports handed out by this process, from below Linux's ephemeral range
/// (32768–60999): a port the OS picked for `bind(0)` is released before
/// cairnd binds it, and meanwhile any client socket — a `dig`, a DNS
/// lookup, an outgoing connection — may be given the same number from the
/// ephemeral range and take it (a node of a test then failed to start about
/// once in six full runs). Ports below the range are never handed out
/// implicitly; a counter keeps the tests of this process apart, and the
/// process id keeps concurrent test processes apart.
fn next_candidate() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 397) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16
}

/// A TCP port free on 127.0.0.1, outside the ephemeral range.
pub fn free_port() -> u16 {
    loop {
        let port = next_candidate();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 (a DNS listener needs
/// both), outside the ephemeral range.
pub fn free_dns_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `cond` until it holds or the deadline passes.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_or(what, timeout, cond, String::new);
}

/// [`wait_until`], saying `why()` too when it times out (the logs).
pub fn wait_or(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    why: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", why());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `addr` accepts connections, failing if `child` exits first.
pub fn wait_listening(child: &mut Child, addr: SocketAddr) {
    wait_until(
        &format!("cairnd to listen on {addr}"),
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("cairnd exited early: {status}");
            }
            TcpStream::connect(addr).is_ok()
        },
    );
}

/// A `cairnd` command with the test admin password, quiet logs and no
/// output: callers add the arguments.
pub fn cairnd() -> Command {
    let mut cmd = Command::new(bin("cairnd"));
    // Only what the test sets: cairnd refuses unknown CAIRN_* variables,
    // and the caller's environment must not change what is tested.
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CAIRN_ADMIN_PASSWORD", PASSWORD)
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Runs `cairnd --config FILE` and expects it to refuse to start: it
/// must exit with an error within the deadline. Returns what it printed.
pub fn refuses_to_start(config: &std::path::Path) -> String {
    let mut child = cairnd()
        .arg("--config")
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start cairnd");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!status.success(), "cairnd exited cleanly: {err}");
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairnd started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL and reap.
fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One `cairnd dev` process.
pub struct Node {
    pub data: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The gRPC listener (hosts' Locator and Config).
    pub grpc: SocketAddr,
    /// The DNS responder (UDP and TCP).
    pub dns: SocketAddr,
    /// The HTTP listener (/metrics, /healthz, /readyz).
    pub http: SocketAddr,
    /// The peer listener of its site of one.
    pub peer: SocketAddr,
    /// The LDAPS listener (the dev mode's TLS; its CA is `ca()`).
    pub ldaps: SocketAddr,
    /// The TFTP listener (UDP).
    pub tftp: SocketAddr,
    pub engine: &'static str,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
    extra_args: Vec<String>,
}

impl Node {
    pub fn start() -> Node {
        Self::start_with("redb", &[])
    }

    pub fn start_with(engine: &'static str, env: &[(&str, &str)]) -> Node {
        Self::start_opts(engine, env, &[])
    }

    /// Starts a node with extra environment and extra `cairnd dev` flags.
    pub fn start_opts(engine: &'static str, env: &[(&str, &str)], args: &[&str]) -> Node {
        Self::start_in(tempfile::tempdir().expect("tempdir"), engine, env, args)
    }

    /// Starts a node whose listeners are all on `ip` (an address of a
    /// test network), its TFTP on port `tftp`.
    pub fn start_at(ip: std::net::IpAddr, tftp: u16, env: &[(&str, &str)]) -> Node {
        let mut n = Node {
            data: tempfile::tempdir().expect("tempdir"),
            addr: SocketAddr::new(ip, free_port()),
            grpc: SocketAddr::new(ip, free_port()),
            dns: SocketAddr::new(ip, free_dns_port()),
            http: SocketAddr::new(ip, free_port()),
            peer: SocketAddr::new(ip, free_port()),
            ldaps: SocketAddr::new(ip, free_port()),
            tftp: SocketAddr::new(ip, tftp),
            engine: "redb",
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_args: vec![],
        };
        n.spawn();
        n
    }

    /// Starts a node on an existing data directory (an older release's,
    /// say).
    pub fn start_in(
        data: tempfile::TempDir,
        engine: &'static str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Node {
        let mut n = Node {
            data,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dns: SocketAddr::from(([127, 0, 0, 1], free_dns_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            peer: SocketAddr::from(([127, 0, 0, 1], free_port())),
            ldaps: SocketAddr::from(([127, 0, 0, 1], free_port())),
            tftp: SocketAddr::from(([127, 0, 0, 1], free_dns_port())),
            engine,
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        n.spawn();
        n
    }

    pub fn url(&self) -> String {
        format!("ldap://{}", self.addr)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}", self.ldaps)
    }

    /// The dev mode's CA certificate, which clients trust.
    pub fn ca(&self) -> std::path::PathBuf {
        self.data.path().join("tls").join("ca.pem")
    }

    /// Whether the `cairnd` process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process ID of the running `cairnd`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node runs").id()
    }

    fn spawn(&mut self) {
        let mut cmd = cairnd();
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--ldap")
            .arg(self.addr.to_string())
            .arg("--grpc")
            .arg(self.grpc.to_string())
            .arg("--dns")
            .arg(self.dns.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--peer")
            .arg(self.peer.to_string())
            .arg("--ldaps")
            .arg(self.ldaps.to_string())
            .arg("--tftp")
            .arg(self.tftp.to_string())
            .arg("--engine")
            .arg(self.engine)
            .args(&self.extra_args);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        // What the node logs, kept with its data (read by `log()`).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("cairnd.log"))
            .expect("node log");
        cmd.stderr(log);
        let mut child = cmd.spawn().expect("start cairnd");
        wait_listening(&mut child, self.addr);
        self.child = Some(child);
    }

    /// Everything the node has logged (`CAIRN_LOG` decides how much).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("cairnd.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("cairnd did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the node again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs an OpenLDAP tool against this node, bound as the admin.
    pub fn tool(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
        self.tool_as(tool, Some((ADMIN, PASSWORD)), args, stdin)
    }

    /// Runs an OpenLDAP tool with the given credentials (None: anonymous).
    pub fn tool_as(
        &self,
        tool: &str,
        creds: Option<(&str, &str)>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Output {
        run_tool(&self.url(), tool, creds, args, stdin)
    }

    /// Runs the `cairn` CLI against this node.
    pub fn cairn(&self, args: &[&str]) -> Output {
        Command::new(bin("cairn"))
            .arg("--url")
            .arg(self.url())
            .arg("--bind-dn")
            .arg(ADMIN)
            .arg("--password")
            .arg(PASSWORD)
            .args(args)
            .output()
            .expect("run cairn")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs one of OpenLDAP's tools (`ldapsearch`, `ldapadd`, ...) against
/// `url` with simple-bind credentials (None: anonymous).
pub fn run_tool(
    url: &str,
    tool: &str,
    creds: Option<(&str, &str)>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    run_tool_trusting(None, url, tool, creds, args, stdin)
}

/// [`run_tool`] trusting only the CA in `ca` for TLS (`LDAPTLS_CACERT`);
/// with none, whatever the system trusts (not the dev CA).
pub fn run_tool_trusting(
    ca: Option<&std::path::Path>,
    url: &str,
    tool: &str,
    creds: Option<(&str, &str)>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut cmd = Command::new(tool);
    cmd.env_remove("LDAPTLS_CACERT")
        .env_remove("LDAPTLS_REQCERT");
    if let Some(ca) = ca {
        cmd.env("LDAPTLS_CACERT", ca);
    }
    cmd.arg("-x").arg("-H").arg(url);
    if let Some((dn, pw)) = creds {
        cmd.arg("-D").arg(dn).arg("-w").arg(pw);
    }
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} (install ldap-utils): {e}"));
    // Standard input is written from its own thread while the output is
    // read here: written first, a large input deadlocked once the tool's
    // output filled its pipe (the tool stopped reading to write).
    let writer = stdin.map(|input| {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_string();
        std::thread::spawn(move || {
            // The tool may exit before reading everything (an error).
            let _ = pipe.write_all(input.as_bytes());
        })
    });
    let out = child.wait_with_output().expect("tool output");
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}

/// The exit status of an OpenLDAP tool is the LDAP result code.
pub fn rc(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a tool succeeded, showing its output otherwise.
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "tool failed ({:?}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The DNs in an ldapsearch LDIF output (unfolded, `dn:` lines only).
pub fn dns(ldif: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur: Option<String> = None;
    for line in ldif.lines() {
        if let Some(rest) = line.strip_prefix(' ') {
            if let Some(c) = cur.as_mut() {
                c.push_str(rest);
            }
            continue;
        }
        if let Some(c) = cur.take() {
            out.push(c);
        }
        if let Some(dn) = line.strip_prefix("dn: ") {
            cur = Some(dn.to_string());
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    out.retain(|d| !d.is_empty());
    out
}

/// LDIF for `n` hosts under prod-a named `{prefix}-{i}`.
pub fn hosts_ldif(prefix: &str, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "dn: cn={prefix}-{i},{PROD_A}\nobjectClass: cairnHost\ncn: {prefix}-{i}\nmacAddress: 02:00:{:02x}:{:02x}:{:02x}:{:02x}\n\n",
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    s
}

/// `cairnd dev --nodes N`: a site of N nodes in one process, node i on
/// 127.0.0.i.
pub struct Site {
    pub data: tempfile::TempDir,
    /// Nodes per site.
    pub nodes: u64,
    /// Linked sites in the process (`--sites`): site s's node i is
    /// 127.0.0.(s·nodes+i), the first site is east, the second west.
    pub sites: u64,
    pub ldap_port: u16,
    pub grpc_port: u16,
    /// The peer listener of every node (Raft between the nodes).
    pub peer_port: u16,
    /// DNS port (UDP and TCP) of every node.
    pub dns_port: u16,
    pub http_port: u16,
    /// LDAPS port of every node.
    pub ldaps_port: u16,
    /// TFTP port (UDP) of every node.
    pub tftp_port: u16,
    child: Option<Child>,
}

impl Site {
    pub fn start(nodes: u64) -> Site {
        Site::start_sites(1, nodes)
    }

    /// `cairnd dev --sites N --nodes M`.
    pub fn start_sites(sites: u64, nodes: u64) -> Site {
        let mut s = Site {
            data: tempfile::tempdir().expect("tempdir"),
            nodes,
            sites,
            ldap_port: free_port(),
            grpc_port: free_port(),
            peer_port: free_port(),
            dns_port: free_dns_port(),
            http_port: free_port(),
            ldaps_port: free_port(),
            tftp_port: free_dns_port(),
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self, node: u64) -> String {
        format!("ldap://127.0.0.{node}:{}", self.ldap_port)
    }

    fn spawn(&mut self) {
        let mut child = cairnd()
            .arg("dev")
            .arg("--nodes")
            .arg(self.nodes.to_string())
            .arg("--sites")
            .arg(self.sites.to_string())
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--ldap-port")
            .arg(self.ldap_port.to_string())
            .arg("--grpc-port")
            .arg(self.grpc_port.to_string())
            .arg("--peer-port")
            .arg(self.peer_port.to_string())
            .arg("--dns-port")
            .arg(self.dns_port.to_string())
            .arg("--http-port")
            .arg(self.http_port.to_string())
            .arg("--ldaps-port")
            .arg(self.ldaps_port.to_string())
            .arg("--tftp-port")
            .arg(self.tftp_port.to_string())
            .spawn()
            .expect("start cairnd");
        for i in 1..=self.nodes * self.sites {
            wait_listening(
                &mut child,
                SocketAddr::from(([127, 0, 0, i as u8], self.ldap_port)),
            );
        }
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Starts the site and waits until every node holds the example tree.
    pub fn start_seeded(nodes: u64) -> Site {
        let site = Site::start(nodes);
        for i in 1..=nodes {
            wait_until(
                "the example tree on every node",
                Duration::from_secs(30),
                || {
                    let out = site.tool(
                        i,
                        "ldapsearch",
                        &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
                        None,
                    );
                    out.status.success() && dns(&stdout(&out)).len() == 4
                },
            );
        }
        site
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs an OpenLDAP tool against node `i` as the admin.
    pub fn tool(&self, i: u64, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
        run_tool(&self.url(i), tool, Some((ADMIN, PASSWORD)), args, stdin)
    }

    /// Runs the `cairn` CLI against node `i` as the admin.
    pub fn cairn(&self, i: u64, args: &[&str]) -> Output {
        cairn_at(&self.url(i), args)
    }

    /// `cairn export` of node `i`.
    pub fn export(&self, i: u64) -> String {
        export_at(&self.url(i)).unwrap_or_else(|e| panic!("export failed: {e}"))
    }
}

/// `cairn export` of the suffix at `url`, as the admin, or why it failed.
pub fn export_at(url: &str) -> Result<String, String> {
    let out = Command::new(bin("cairn"))
        .args([
            "--url",
            url,
            "--bind-dn",
            ADMIN,
            "--password",
            PASSWORD,
            "export",
            SUFFIX,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The ports every node of a test site uses, each on its own 127.0.0.i.
#[derive(Clone, Copy)]
pub struct Ports {
    pub ldap: u16,
    pub grpc: u16,
    /// The peer listener (Raft between the nodes).
    pub peer: u16,
    pub dns: u16,
    pub http: u16,
}

/// The configuration file of node `i` of site "east" whose members are
/// `members` (node j on 127.0.0.j): anonymous reads allowed, the example
/// tree seeded by the lowest id.
pub fn node_config(i: u64, data_dir: &std::path::Path, p: Ports, members: &[u64]) -> String {
    site_node_config(i, data_dir, p, members, &SiteSpec::east())
}

/// Which site a [`ProcSite`] is: its name, the address of its node 1
/// (node j on 127.0.0.(first_ip + j - 1)), whether it loads the example
/// tree, and its linked sites with their nodes' peer addresses.
#[derive(Clone, Debug)]
pub struct SiteSpec {
    pub name: &'static str,
    pub first_ip: u8,
    pub seed: bool,
    pub peers: Vec<(&'static str, Vec<String>)>,
    /// Per node (1, 2, …), the peer address it publishes for other sites
    /// (`advertise_peer_addr`), where it is not its own.
    pub advertise: Vec<String>,
    /// Nodes whose certificate (and CA) come from another deployment;
    /// every other node's comes from the test run's one CA
    /// ([`deployment_ca`]).
    pub foreign: Vec<u64>,
    /// The first three octets of the nodes' addresses (127.0.0: loopback).
    pub net: [u8; 3],
    /// Whether the nodes serve TFTP, on port 69 of their address.
    pub boot: bool,
}

impl SiteSpec {
    /// Site east alone, node j on 127.0.0.j, seeding the example tree.
    pub fn east() -> SiteSpec {
        SiteSpec {
            name: "east",
            first_ip: 1,
            seed: true,
            peers: vec![],
            advertise: vec![],
            foreign: vec![],
            net: [127, 0, 0],
            boot: false,
        }
    }

    /// The address of node `j`.
    pub fn ip(&self, j: u64) -> String {
        let [a, b, c] = self.net;
        format!("{a}.{b}.{c}.{}", u64::from(self.first_ip) + j - 1)
    }
}

impl Ports {
    /// Free ports for a site's nodes.
    pub fn free() -> Ports {
        Ports {
            ldap: free_port(),
            grpc: free_port(),
            peer: free_port(),
            dns: free_dns_port(),
            http: free_port(),
        }
    }
}

/// The configuration file of node `i` of the site `spec` whose members are
/// `members`.
pub fn site_node_config(
    i: u64,
    data_dir: &std::path::Path,
    p: Ports,
    members: &[u64],
    spec: &SiteSpec,
) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|&j| {
            let ip = spec.ip(j);
            format!(
                "{{ id = {j}, grpc = \"{ip}:{}\", peer = \"{ip}:{}\", ldap = \"{ip}:{}\" }}",
                p.grpc, p.peer, p.ldap
            )
        })
        .collect();
    let ip = spec.ip(i);
    let (ca, cert, key) = node_tls_files(data_dir, spec, i);
    let mut text = format!(
        "[tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         [node]\ndata_dir = \"{data}\"\n[directory]\nseed_example = {seed}\n\
         [ldap]\nlisten = \"{ip}:{l}\"\nanonymous_read = true\nallow_plaintext_binds = true\n\
         [grpc]\nlisten = \"{ip}:{g}\"\n[dns]\nlisten = \"{ip}:{d}\"\n\
         [http]\nlisten = \"{ip}:{h}\"\n\
         [cluster]\nnode_id = {i}\nsite = \"{site}\"\npeer_addr = \"{ip}:{pp}\"\n\
         members = [{m}]\n",
        data = data_dir.display(),
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
        seed = spec.seed,
        site = spec.name,
        l = p.ldap,
        g = p.grpc,
        pp = p.peer,
        d = p.dns,
        h = p.http,
        m = members.join(", ")
    );
    if let Some(a) = spec.advertise.get(i as usize - 1) {
        text.push_str(&format!("advertise_peer_addr = \"{a}\"\n"));
    }
    for (site, nodes) in &spec.peers {
        let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[[cluster.peer_sites]]\nsite = \"{site}\"\nnodes = [{}]\n",
            nodes.join(", ")
        ));
    }
    if spec.boot {
        text.push_str(&format!("[boot]\ntftp_listen = \"{ip}:69\"\n"));
    }
    text
}

/// Whether the directory at `url` holds the example tree (its four hosts).
pub fn has_example_tree(url: &str) -> bool {
    let out = run_tool(
        url,
        "ldapsearch",
        Some((ADMIN, PASSWORD)),
        &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
        None,
    );
    out.status.success() && dns(&stdout(&out)).len() == 4
}

/// The test run's deployment CA (`ca.pem`, `ca-key.pem`): every
/// [`ProcSite`] node's certificate is issued by it, so the sites of one
/// test can replicate with each other.
pub fn deployment_ca() -> &'static Path {
    static CA: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        cairn_tls::ca::Ca::open_or_create(dir.path(), "Cairn test deployment CA")
            .expect("the test CA");
        dir
    })
    .path()
}

/// Where node `i` of `spec` keeps its TLS files, beside its data
/// directory: `tls/` (a copy of the deployment's CA and the certificates
/// `cairn certs init` made with it) or, for a foreign node, `tls-foreign/`
/// (a CA of its own).
fn node_tls_files(data_dir: &Path, spec: &SiteSpec, i: u64) -> (PathBuf, PathBuf, PathBuf) {
    let base = data_dir.parent().expect("a site directory");
    let dir = if spec.foreign.contains(&i) {
        base.join("tls-foreign")
    } else {
        base.join("tls")
    };
    let node = cairn_tls::NodeName::new(spec.name, i);
    let (cert, key) = cairn_tls::ca::node_files(&dir, &node);
    (dir.join("ca.pem"), cert, key)
}

/// Makes the certificates of `nodes` of `spec` under `site_dir` with
/// `cairn certs init`, as an operator would: with the CA in `ca` (its
/// `ca.pem` and `ca-key.pem`), and for `spec.foreign` nodes with a CA of
/// their own. Where the configurations of [`site_node_config`] look.
pub fn make_certs(site_dir: &Path, spec: &SiteSpec, nodes: &[u64], ca: &Path) {
    let tls = site_dir.join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    for f in ["ca.pem", "ca-key.pem"] {
        if ca != tls {
            std::fs::copy(ca.join(f), tls.join(f)).expect("copy the CA");
        }
    }
    let arg = |j: u64| format!("{}/{j}={},localhost", spec.name, spec.ip(j));
    let (own, foreign): (Vec<u64>, Vec<u64>) =
        nodes.iter().partition(|j| !spec.foreign.contains(j));
    for (dir, list) in [(tls, own), (site_dir.join("tls-foreign"), foreign)] {
        if list.is_empty() {
            continue;
        }
        let mut args = vec!["certs".to_string(), "init".into(), "--out".into()];
        args.push(dir.display().to_string());
        for j in list {
            args.push("--node".into());
            args.push(arg(j));
        }
        let out = Command::new(bin("cairn"))
            .args(&args)
            .output()
            .expect("run cairn certs init");
        assert!(
            out.status.success(),
            "cairn certs init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A site of N separate `cairnd --config` processes, node i on 127.0.0.i,
/// so that one node can be killed on its own.
pub struct ProcSite {
    pub data: tempfile::TempDir,
    pub ldap_port: u16,
    pub dns_port: u16,
    pub http_port: u16,
    pub spec: SiteSpec,
    children: Vec<Option<Child>>,
}

impl ProcSite {
    pub fn start(nodes: u64) -> ProcSite {
        ProcSite::start_spec(nodes, SiteSpec::east(), Ports::free())
    }

    /// A site of `nodes` processes as `spec` says, on `ports`.
    pub fn start_spec(nodes: u64, spec: SiteSpec, ports: Ports) -> ProcSite {
        let mut s = ProcSite {
            data: tempfile::tempdir().expect("tempdir"),
            ldap_port: ports.ldap,
            dns_port: ports.dns,
            http_port: ports.http,
            spec,
            children: vec![],
        };
        let members: Vec<u64> = (1..=nodes).collect();
        make_certs(s.data.path(), &s.spec, &members, deployment_ca());
        for i in 1..=nodes {
            let config = site_node_config(
                i,
                &s.data.path().join(format!("node-{i}")),
                ports,
                &members,
                &s.spec,
            );
            let file = s.data.path().join(format!("node-{i}.toml"));
            std::fs::write(&file, config).expect("write config");
            s.children.push(None);
            s.spawn(i);
        }
        s
    }

    /// Starts node `i` from its config file, its log appended to
    /// `node-i.log` in the site's directory.
    fn spawn(&mut self, i: u64) {
        let file = self.data.path().join(format!("node-{i}.toml"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("node log");
        let mut child = cairnd()
            .env("CAIRN_LOG", "warn,cairn_replica=info")
            .arg("--config")
            .arg(&file)
            .stderr(log)
            .spawn()
            .expect("start cairnd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.ldap_addr(i)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "node {i} exited early: {status}\n{}",
                    std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "node {i} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.children[i as usize - 1] = Some(child);
    }

    /// How many nodes the site has.
    pub fn spec_nodes(&self) -> u64 {
        self.children.len() as u64
    }

    pub fn log_path(&self, i: u64) -> PathBuf {
        self.data.path().join(format!("node-{i}.log"))
    }

    /// The last lines each node logged, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 1..=self.children.len() as u64 {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!("--- node {i} ---\n{}\n", all[from..].join("\n")));
        }
        out
    }

    pub fn ldap_addr(&self, i: u64) -> SocketAddr {
        format!("{}:{}", self.spec.ip(i), self.ldap_port)
            .parse()
            .expect("a node address")
    }

    pub fn url(&self, i: u64) -> String {
        format!("ldap://{}", self.ldap_addr(i))
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: u64) {
        if let Some(c) = self.children.get_mut(i as usize - 1) {
            kill9(c);
        }
    }

    /// Starts node `i` again on its data directory (after a kill).
    pub fn restart(&mut self, i: u64) {
        self.kill9(i);
        self.spawn(i);
    }

    /// Runs the `cairn` CLI against node 1 as the admin.
    pub fn cairn_cli(&self, args: &[&str]) -> Output {
        cairn_at(&self.url(1), args)
    }

    /// `cairn export` of node `i`, or why it failed.
    pub fn export(&self, i: u64) -> Result<String, String> {
        export_at(&self.url(i))
    }
}

impl Drop for ProcSite {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill9(c);
        }
    }
}

/// A plain HTTP/1.1 GET: status code and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A small deterministic generator (xorshift): a run is replayed from its
/// seed, apart from the timing of the processes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs the `cairn` CLI against the node at `url` as the admin.
pub fn cairn_at(url: &str, args: &[&str]) -> Output {
    Command::new(bin("cairn"))
        .args(["--url", url, "--bind-dn", ADMIN, "--password", PASSWORD])
        .args(args)
        .output()
        .expect("run cairn")
}

/// The network between sites, in the test process: other sites reach each
/// node's peer listener through a relay on `127.0.1.<its last octet>`,
/// which passes bytes on while the two sites' link is up, and drops its
/// connections (and every new one) while the link is cut: a partition as
/// the processes see one, with nothing changed in them. The relay's
/// outgoing connection leaves from `127.0.1.<the caller's last octet>`, so
/// the callee admits the caller by the relay address its configuration
/// lists for the caller's site.
pub struct Wan {
    rt: tokio::runtime::Runtime,
    state: std::sync::Arc<std::sync::Mutex<WanState>>,
}

#[derive(Default)]
struct WanState {
    /// Site of each node, by the last octet of its address.
    site_of: std::collections::HashMap<u8, String>,
    /// Cut links, as sorted pairs of site names.
    cut: std::collections::BTreeSet<(String, String)>,
    /// Live relayed connections: the two sites and the task relaying it.
    conns: Vec<(String, String, tokio::task::AbortHandle)>,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Wan {
    pub fn new() -> Wan {
        Wan {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("relay runtime"),
            state: Default::default(),
        }
    }

    /// A relay to node `ip_last` of `site`, whose peer listener is on
    /// `127.0.0.<ip_last>:port`; returns the relay's address.
    pub fn relay(&self, site: &str, ip_last: u8, port: u16) -> String {
        self.state
            .lock()
            .expect("wan")
            .site_of
            .insert(ip_last, site.to_string());
        let listen = format!("127.0.1.{ip_last}:0");
        let target: SocketAddr = format!("127.0.0.{ip_last}:{port}").parse().expect("addr");
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(&listen))
            .expect("relay listener");
        let addr = listener.local_addr().expect("relay address");
        let state = self.state.clone();
        let to_site = site.to_string();
        self.rt.spawn(async move {
            loop {
                let Ok((inbound, from)) = listener.accept().await else {
                    return;
                };
                let std::net::IpAddr::V4(ip) = from.ip() else {
                    continue;
                };
                let last = ip.octets()[3];
                let mut st = state.lock().expect("wan");
                let Some(from_site) = st.site_of.get(&last).cloned() else {
                    continue;
                };
                if st.cut.contains(&link(&from_site, &to_site)) {
                    continue; // dropped: the link is down
                }
                let task = tokio::spawn(async move {
                    let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                        return;
                    };
                    let source: SocketAddr = format!("127.0.1.{last}:0").parse().expect("addr");
                    if sock.bind(source).is_err() {
                        return;
                    }
                    let Ok(outbound) = sock.connect(target).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
                st.conns
                    .push((from_site, to_site.clone(), task.abort_handle()));
                st.conns.retain(|(_, _, t)| !t.is_finished());
            }
        });
        addr.to_string()
    }

    /// Cuts the link between two sites: their relayed connections drop,
    /// and new ones are dropped until [`Wan::heal`].
    pub fn cut(&self, a: &str, b: &str) {
        let mut st = self.state.lock().expect("wan");
        let l = link(a, b);
        st.cut.insert(l.clone());
        st.conns.retain(|(x, y, task)| {
            if link(x, y) == l {
                task.abort();
                false
            } else {
                true
            }
        });
    }

    pub fn heal(&self, a: &str, b: &str) {
        self.state.lock().expect("wan").cut.remove(&link(a, b));
    }

    pub fn heal_all(&self) {
        self.state.lock().expect("wan").cut.clear();
    }
}

impl Default for Wan {
    fn default() -> Wan {
        Wan::new()
    }
}

/// `curl` of an HTTP `url` (`extra` arguments before it; the path is sent
/// as written): the status code and the body.
pub fn curl_http(url: &str, extra: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--path-as-is",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let mut body = out.stdout;
    let at = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[at + 1..]).to_string();
    body.truncate(at);
    (code, body)
}
