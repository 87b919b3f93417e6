//! Issue 13: a real machine network-boots from Cairn. A QEMU guest (its
//! NIC's iPXE ROM, software emulation) boots from a `cairnd dev` node and
//! nothing else: pxelinux over the node's TFTP, or iPXE's script over its
//! HTTP port, loads the kernel and initrds of the build its cluster's
//! `boot.image` names; the guest's `/init` (tests/pxe/init.sh) resolves the
//! `_cairn._tcp` SRV record at the node's DNS, runs `cairn pull` and prints
//! what it got on the serial console. After `cairn image rollback` the next
//! boot loads the previous build. The recipe this follows, and its
//! timings, are in `../shared/recipes/pxe-e2e/`; `docs/boot.md` has more.
//!
//! Under QEMU's user networking the guest reaches the host's 127.0.0.1 as
//! 10.0.2.2 on any port but 69 (QEMU answers that one itself), so the boot
//! file is a URL naming the node's port, and every request reaches the
//! node from 127.0.0.1: a host is known by the names it asks for.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kit::{
    ADMIN, Node, PASSWORD, Ports, ProcSite, SiteSpec, bin, has_example_tree, ok, run_tool, stdout,
    wait_until,
};

/// The guest's NIC and SMBIOS UUID. pxelinux asks for this UUID's file
/// (its byte 6 on the wire, 0x1e, is in the range pxelinux accepts) with
/// the first three groups byte-swapped.
const MAC: &str = "52:54:00:12:34:56";
const UUID: &str = "5f1c2a3e-0b7d-4c1e-9a55-123456789abc";
const UUID_AS_PXELINUX_ASKS: &str = "3e2a1c5f-7d0b-1e4c-9a55-123456789abc";
const LAB: &str = "cn=pxe-lab,cn=dc-east,ou=inventory,dc=example,dc=com";
const HOST: &str = "cn=pxe-01,cn=pxe-lab,cn=dc-east,ou=inventory,dc=example,dc=com";

/// How long one boot may take: about 13 s alone on this machine kind,
/// more while other tests share its two cores.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);

/// Held by each test that boots a guest, for its whole run: the guests
/// take about a core each under software emulation, and the tests share
/// the boot assets and this process's network names.
static ONE_GUEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`ONE_GUEST_AT_A_TIME`], whatever an earlier test's panic left.
fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The kernel, initrds (builds build-1 and build-2) and boot loader
/// `tests/pxe/assets` builds (the kernel download is cached across
/// runs), next to the binaries; built once per test process.
fn assets() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_assets).clone()
}

fn build_assets() -> PathBuf {
    let builds = ["build-1", "build-2"];
    let cairn = bin("cairn");
    let out = cairn
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("pxe-e2e");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pxe/assets");
    let built = Command::new(&script)
        .arg(&out)
        .arg(&cairn)
        .args(builds)
        .output()
        .expect("run tests/pxe/assets");
    assert!(
        built.status.success(),
        "tests/pxe/assets failed (tests/run installs what it needs):\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// The kernel command line of a build booted under QEMU's user
/// networking: the guest reaches node `n` at 10.0.2.2.
fn slirp_append(n: &Node) -> String {
    format!(
        "console=ttyS0 quiet cairn.grpc=10.0.2.2:{} cairn.dns=10.0.2.2:{} \
         cairn.domain=${{domain}} cairn.host=${{hostname}} cairn.image=${{image}}",
        n.grpc.port(),
        n.dns.port()
    )
}

/// Adds build `name` with `cairn image add` (the kernel, the shared
/// initramfs, and the build's own one naming it, in that order; the
/// command line `append`), and puts pxelinux in the image root.
fn add_build(n: &Node, assets: &Path, name: &str, append: &str) {
    let root = n.data.path().join("images");
    for f in ["pxelinux.0", "ldlinux.c32"] {
        std::fs::copy(assets.join(f), root.join(f)).unwrap();
    }
    let dir = build_dir(assets, name);
    ok(n.cairn(&image_add(&dir, name, append)));
}

/// `cairn image add` of the build in `dir` (from [`build_dir`]) as
/// `name`, its modules in order, with the command line `append`.
fn image_add<'a>(dir: &'a tempfile::TempDir, name: &'a str, append: &'a str) -> [&'a str; 13] {
    [
        "image",
        "add",
        dir.path().to_str().expect("a UTF-8 temporary path"),
        "--name",
        name,
        "--kernel",
        "vmlinuz",
        "--initrd",
        "base.gz",
        "--initrd",
        "build.gz",
        "--append",
        append,
    ]
}

/// Boots the guest under QEMU's user networking with `bootfile` as its
/// DHCP boot file; its serial console (see [`run_guest`]).
fn boot(bootfile: &str) -> String {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(guest_args(&format!("user,id=n0,bootfile={bootfile}")));
    run_guest(qemu)
}

/// QEMU's arguments for the guest on network backend `netdev`.
fn guest_args(netdev: &str) -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
        "-uuid",
        UUID,
        "-netdev",
        netdev,
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        "-boot",
        "n",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Runs the QEMU command `qemu` and returns the guest's serial console
/// once its `/init` is done (or the boot failed, or the deadline passed).
fn run_guest(mut qemu: Command) -> String {
    let mut qemu = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64 (tests/run installs qemu-system-x86)");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let serial = qemu.stdout.take().expect("serial");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(serial).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + BOOT_DEADLINE;
    let mut console = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if line.contains("CAIRN-E2E: done")
                    || line.contains("Kernel panic")
                    || line.contains("No bootable device")
                {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // The guest powers itself off; a failed boot is stopped here.
    let stop = Instant::now() + Duration::from_secs(20);
    while matches!(qemu.try_wait(), Ok(None)) && Instant::now() < stop {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    console
}

/// Asserts node log `log` has a line with `how` (which server, and which
/// client) for each of build `name`'s three files, and serves none of
/// build `not`'s.
fn assert_served(log: &str, how: &str, name: &str, not: Option<&str>) {
    for f in ["vmlinuz", "base.gz", "build.gz"] {
        assert!(
            log.lines()
                .any(|l| l.contains(how) && l.contains(&format!("file={name}/{f} "))),
            "{name}/{f} not served ({how}):\n{log}"
        );
    }
    if let Some(other) = not {
        assert!(!log.contains(&format!("file={other}/")), "{log}");
    }
}

/// The log lines node `n` wrote from byte `from` on.
fn log_since(n: &Node, from: usize) -> String {
    n.log().get(from..).unwrap_or_default().to_string()
}

/// The cluster pxe-lab on build-1, moved to build-2 since (its history
/// says so), and the guest's host entry in it: the tool and the LDIF of
/// each step.
fn lab_ldif() -> [(&'static str, String); 2] {
    [
        (
            "ldapadd",
            format!(
                "dn: {LAB}\nobjectClass: cairnCluster\ncn: pxe-lab\ncairnSetting: boot.image=build-1\n\n\
                 dn: {HOST}\nobjectClass: cairnHost\ncn: pxe-01\nmacAddress: {MAC}\nnetbootGUID: {UUID}\n"
            ),
        ),
        (
            "ldapmodify",
            format!(
                "dn: {LAB}\nchangetype: modify\ndelete: cairnSetting\ncairnSetting: boot.image=build-1\n-\n\
                 add: cairnSetting\ncairnSetting: boot.image=build-2\n"
            ),
        ),
    ]
}

/// [`lab_ldif`] at node `n`.
fn lab(n: &Node) {
    for (tool, ldif) in lab_ldif() {
        ok(n.tool(tool, &[], Some(&ldif)));
    }
}

/// Asserts the guest booted build `name` and pulled its configuration.
fn assert_booted(console: &str, name: &str) {
    // The kernel's command line, with the host's values substituted.
    let cmdline: Vec<&str> = console
        .lines()
        .find_map(|l| l.split("CAIRN-E2E: cmdline ").nth(1))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for want in [
        format!("cairn.image={name}"),
        "cairn.host=pxe-01".to_string(),
        "cairn.domain=example.com".to_string(),
    ] {
        assert!(
            cmdline.contains(&want.as_str()),
            "{want} not on the kernel's command line:\n{console}"
        );
    }
    for want in [
        format!("CAIRN-E2E: build {name}"),
        "CAIRN-E2E: srv| _cairn._tcp.example.com".to_string(),
        format!("CAIRN-E2E: pull| # host {HOST}"),
        format!("CAIRN-E2E: pull| boot.image={name}\t# from {LAB}"),
        "CAIRN-E2E: pull OK".to_string(),
    ] {
        assert!(
            console.contains(&want),
            "the guest's console lacks {want:?}:\n{console}"
        );
    }
}

/// Issue 13's "done": a QEMU guest network-boots from a Cairn node with
/// no other boot server, gets the build its cluster is pinned to, pulls
/// its configuration, and after `cairn image rollback` boots the previous
/// build — over TFTP (pxelinux) and over HTTP (an iPXE script).
#[test]
fn issue_13_a_qemu_guest_network_boots_its_clusters_build_and_after_rollback_the_previous_one() {
    let _guest = one_guest_at_a_time();
    let assets = assets();
    // Its log says which files it served.
    let n = Node::start_with("redb", &[("CAIRN_LOG", "info")]);
    wait_until("the example tree", Duration::from_secs(20), || {
        has_example_tree(&n.url())
    });
    for b in ["build-1", "build-2"] {
        add_build(&n, &assets, b, &slirp_append(&n));
    }
    // The cluster was on build-1 and moved to build-2: its history says so.
    lab(&n);
    let tftp = format!("tftp://10.0.2.2:{}/pxelinux.0", n.tftp.port());

    // 1. Over TFTP: pxelinux asks for its UUID's file first (byte-swapped)
    // and gets build-2's configuration; the kernel and both initrds follow.
    let mark = n.log().len();
    let console = boot(&tftp);
    assert_booted(&console, "build-2");
    let log = log_since(&n, mark);
    assert!(
        log.contains("TFTP boot configuration rendered client=127.0.0.1")
            && log.contains(&format!("name=pxelinux.cfg/{UUID_AS_PXELINUX_ASKS}")),
        "{log}"
    );
    assert_served(&log, "TFTP file", "build-2", Some("build-1"));

    // 2. Roll the cluster back: one modify, and the next boot is build-1's.
    let out = ok(n.cairn(&["image", "rollback", "pxe-lab"]));
    assert_eq!(
        stdout(&out).trim(),
        format!("{LAB}: boot.image build-2 -> build-1")
    );
    let mark = n.log().len();
    let console = boot(&tftp);
    assert_booted(&console, "build-1");
    let log = log_since(&n, mark);
    assert_served(&log, "TFTP file", "build-1", Some("build-2"));

    // 3. Over HTTP: iPXE runs the node's script for this host (its UUID
    // and MAC filled in by iPXE) and fetches the files over HTTP.
    let mark = n.log().len();
    let console = boot(&format!(
        "http://10.0.2.2:{}/boot.ipxe?uuid=${{uuid}}&mac=${{net0/mac}}",
        n.http.port()
    ));
    assert_booted(&console, "build-1");
    let log = log_since(&n, mark);
    assert!(
        log.contains("iPXE script rendered client=127.0.0.1")
            && log.contains(&format!("host={HOST} build=build-1")),
        "{log}"
    );
    assert_served(&log, "HTTP boot file client=127.0.0.1:", "build-1", None);
}

/// A private network for one test: a namespace holding a bridge with a
/// tap device for the guest, joined by a veth pair to this namespace,
/// where the node listens on `host` (10.77.k.1); the bridge is 10.77.k.2.
/// Removed on drop.
struct Lan {
    ns: String,
    veth: String,
    k: u8,
}

/// A process killed (SIGKILL) and reaped when dropped, a failed assertion
/// included.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `ip ARGS` and asserts it worked.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    fn up() -> Lan {
        assert!(
            is_root() && Path::new("/dev/net/tun").exists(),
            "the network-namespace boot test needs root and /dev/net/tun"
        );
        // Unique in this process (a counter) and, mostly, among test
        // processes (the process id).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k = ((pid + n * 7) % 200 + 20) as u8;
        let lan = Lan {
            ns: format!("cairn-pxe-{pid}-{n}"),
            veth: format!("cpxe{}", pid * 10 + n),
            k,
        };
        let ns = lan.ns.as_str();
        let host = format!("10.77.{k}.1/24");
        let bridge = format!("10.77.{k}.2/24");
        let v6 = format!("fd77:{k}::1/64");
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", &lan.veth, "type", "veth", "peer", "name", "vn", "netns", ns,
        ]);
        ip(&["addr", "add", &host, "dev", &lan.veth]);
        ip(&["link", "set", &lan.veth, "up"]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["link", "set", "vn", "master", "br0"],
            vec!["addr", "add", &bridge, "dev", "br0"],
            vec!["-6", "addr", "add", &v6, "dev", "br0"],
            vec!["tuntap", "add", "tap0", "mode", "tap"],
            vec!["link", "set", "tap0", "master", "br0"],
            vec!["link", "set", "vn", "up"],
            vec!["link", "set", "tap0", "up"],
            vec!["link", "set", "br0", "up"],
        ] {
            let mut a = vec!["-n", ns];
            a.extend(args);
            ip(&a);
        }
        lan
    }

    /// The node's address on this network.
    fn host(&self) -> std::net::IpAddr {
        std::net::IpAddr::from([10, 77, self.k, 1])
    }

    /// Gives this side of the link another address, 10.77.k.`last`.
    fn add_host(&self, last: u8) -> std::net::IpAddr {
        let addr = format!("10.77.{}.{last}/24", self.k);
        ip(&["addr", "add", &addr, "dev", &self.veth]);
        std::net::IpAddr::from([10, 77, self.k, last])
    }

    /// dnsmasq on the bridge with `conf` (a `cairn dhcp snippet`), its
    /// log in `log`; stopped when dropped.
    fn dnsmasq(&self, conf: &Path, log: &Path, leases: &Path) -> Killed {
        let k = self.k;
        self.exec("dnsmasq")
            .args([
                "--no-daemon",
                "--port=0",
                "--interface=br0",
                "--bind-interfaces",
                "--log-dhcp",
                "--log-facility=-",
                "--enable-ra",
            ])
            .arg(format!("--dhcp-range=10.77.{k}.100,10.77.{k}.150,1h"))
            .arg(format!("--dhcp-range=fd77:{k}::,ra-only"))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--conf-file={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .map(Killed)
            .expect("start dnsmasq (tests/run installs dnsmasq-base)")
    }

    /// Boots the guest on the bridge; its serial console.
    fn boot(&self) -> String {
        let mut qemu = self.exec("qemu-system-x86_64");
        qemu.args(guest_args(
            "tap,id=n0,ifname=tap0,script=no,downscript=no,vnet_hdr=off",
        ));
        run_guest(qemu)
    }

    /// A command run inside the namespace.
    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// Whether this process runs as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Issue 13, the second variant: a real LAN in a network namespace.
/// dnsmasq, configured by `cairn dhcp snippet`, is the DHCP server; the
/// guest's iPXE gets the node's boot script over HTTP from it, boots its
/// cluster's build, finds the node through the `_cairn._tcp` SRV record
/// alone and pulls its configuration. The node sees the guest's own
/// address.
#[test]
fn issue_13_on_a_lan_with_dnsmasq_configured_by_cairn_dhcp_snippet_a_guest_boots_and_finds_cairn_by_srv()
 {
    let _guest = one_guest_at_a_time();
    let assets = assets();
    let lan = Lan::up();
    let k = lan.k;
    let n = Node::start_at(lan.host(), 69, &[("CAIRN_LOG", "info")]);
    wait_until("the example tree", Duration::from_secs(20), || {
        has_example_tree(&n.url())
    });
    let append = format!(
        "console=ttyS0 quiet cairn.dns={} cairn.domain=${{domain}} cairn.host=${{hostname}} \
         cairn.image=${{image}}",
        n.dns
    );
    for b in ["build-1", "build-2"] {
        add_build(&n, &assets, b, &append);
    }
    lab(&n);
    // The node publishes its HTTP and TFTP addresses; the snippet is
    // made from them.
    let mut snippet = String::new();
    wait_until("the node's boot addresses", Duration::from_secs(30), || {
        let out = n.cairn(&["dhcp", "snippet", "--format", "dnsmasq"]);
        snippet = stdout(&out);
        out.status.success()
    });
    let script = format!("http://10.77.{k}.1:{}/boot.ipxe", n.http.port());
    assert!(
        snippet.contains(&format!("dhcp-boot=tag:ipxe,{script}\n"))
            && snippet.contains(&format!("undionly.kpxe,,10.77.{k}.1\n")),
        "{snippet}"
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("cairn.conf");
    std::fs::write(&conf, &snippet).unwrap();
    let dhcp_log = dir.path().join("dnsmasq.log");
    let dnsmasq = lan.dnsmasq(&conf, &dhcp_log, &dir.path().join("leases"));
    let mark = n.log().len();
    let console = lan.boot();
    drop(dnsmasq);
    let dhcp = std::fs::read_to_string(&dhcp_log).unwrap_or_default();
    assert_booted(&console, "build-2");
    assert!(
        console.contains(&format!(
            "CAIRN-E2E: pull --dns {} --domain example.com",
            n.dns
        )),
        "the guest did not find the node by SRV alone:\n{console}"
    );
    // The address dnsmasq leased the guest (from its range, .100–.150).
    let leased = console
        .lines()
        .find_map(|l| l.split("CAIRN-E2E: address ").nth(1))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert!(
        leased.starts_with(&format!("10.77.{k}.1")) && leased.len() > format!("10.77.{k}.1").len(),
        "no lease in:\n{console}"
    );
    // dnsmasq gave iPXE the script's URL (the snippet's iPXE branch).
    assert!(
        dhcp.contains("tags: ipxe") && dhcp.contains(&script),
        "dnsmasq:\n{dhcp}"
    );
    // The node saw the guest's own address, and served build-2's files.
    let log = log_since(&n, mark);
    assert!(
        log.contains(&format!("iPXE script rendered client={leased}:"))
            && log.contains(&format!("host={HOST} build=build-2")),
        "{log}"
    );
    assert_served(
        &log,
        &format!("HTTP boot file client={leased}:"),
        "build-2",
        None,
    );
}

/// Issue 13: what `cairn dhcp snippet` prints is accepted by each DHCP
/// server it is for, checked by the servers themselves (`dnsmasq --test`,
/// ISC `dhcpd -t`, `kea-dhcp4 -t`, unpacked from Debian's packages by
/// `tests/pxe/dhcp-servers`), and names the node's addresses; a config
/// the servers refuse is refused by the same checks.
#[test]
fn issue_13_cairn_dhcp_snippet_is_accepted_by_dnsmasq_isc_dhcpd_and_kea() {
    let tools = bin("cairn")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("dhcp-servers");
    let found = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("pxe/dhcp-servers"))
        .arg(&tools)
        .output()
        .expect("run tests/pxe/dhcp-servers");
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let found = stdout(&found);
    let line = |name: &str| -> Vec<String> {
        found
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {found}"))
            .split(' ')
            .map(str::to_string)
            .collect()
    };
    let (dhcpd, kea) = (line("dhcpd"), line("kea"));
    let n = Node::start();
    let dir = tempfile::tempdir().unwrap();
    // Each server's check of a file: whether it accepts it, and what it said.
    let check = |format: &str, path: &Path| -> (bool, String) {
        let mut c = match format {
            "dnsmasq" => {
                let mut c = Command::new("dnsmasq");
                c.arg("--test")
                    .arg(format!("--conf-file={}", path.display()));
                c
            }
            "isc" => {
                let mut c = Command::new(&dhcpd[0]);
                c.args(["-t", "-cf"]).arg(path);
                c
            }
            _ => {
                let mut c = Command::new(&kea[0]);
                c.env("LD_LIBRARY_PATH", &kea[1]).arg("-t").arg(path);
                c
            }
        };
        let out = c.output().expect("run the DHCP server's check");
        let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        (out.status.success() && !said.contains("ERROR"), said)
    };
    let script = format!("http://{}/boot.ipxe", n.http);
    let mut snippet = String::new();
    for format in ["dnsmasq", "isc", "kea"] {
        wait_until("the node's boot addresses", Duration::from_secs(30), || {
            let out = n.cairn(&["dhcp", "snippet", "--format", format]);
            snippet = stdout(&out);
            out.status.success()
        });
        assert!(snippet.contains(&script), "{format}:\n{snippet}");
        assert!(snippet.contains("undionly.kpxe"), "{format}:\n{snippet}");
        let path = dir.path().join(format!("cairn.{format}"));
        std::fs::write(&path, &snippet).unwrap();
        let (accepted, said) = check(format, &path);
        assert!(accepted, "{format} refused the snippet:\n{snippet}\n{said}");
        // The check can fail: a mangled snippet is refused.
        let bad = dir.path().join(format!("bad.{format}"));
        std::fs::write(
            &bad,
            snippet.replacen("undionly.kpxe", "undionly.kpxe\"{", 1),
        )
        .unwrap();
        let (accepted, said) = check(format, &bad);
        assert!(!accepted, "{format} accepted a mangled snippet:\n{said}");
    }
}

/// Issue 13: with two sites, `east` and `west`, each a `cairnd` process
/// on the LAN, a build added at `east` reaches `west`; then `east` is
/// killed (SIGKILL: the sites are cut apart for good), and a host of
/// `west` still boots its cluster's build from `west`, through the DHCP
/// options `cairn dhcp snippet --site west` gives, and pulls its
/// configuration from `west`.
#[test]
fn issue_13_a_host_of_west_boots_and_pulls_from_west_with_east_gone() {
    let _guest = one_guest_at_a_time();
    let assets = assets();
    let lan = Lan::up();
    let k = lan.k;
    let (east_ip, west_ip) = (lan.add_host(11), lan.add_host(21));
    // Both sites on the same ports, each on its own address.
    let ports = Ports::free();
    let net = [10, 77, k];
    let west_spec = SiteSpec {
        name: "west",
        first_ip: 21,
        seed: false,
        peers: vec![("east", vec![format!("{east_ip}:{}", ports.peer)])],
        advertise: vec![],
        foreign: vec![],
        net,
        boot: true,
    };
    let east_spec = SiteSpec {
        name: "east",
        first_ip: 11,
        seed: true,
        peers: vec![("west", vec![format!("{west_ip}:{}", ports.peer)])],
        advertise: vec![],
        foreign: vec![],
        net,
        boot: true,
    };
    let mut east = ProcSite::start_spec(1, east_spec, ports);
    let west = ProcSite::start_spec(1, west_spec, ports);
    wait_until("the example tree at west", Duration::from_secs(60), || {
        has_example_tree(&west.url(1))
    });
    // The lab and its host (the token's scope must exist first).
    for (tool, ldif) in lab_ldif() {
        ok(run_tool(
            &east.url(1),
            tool,
            Some((ADMIN, PASSWORD)),
            &[],
            Some(&ldif),
        ));
    }
    // These nodes ask hosts for an enrollment token, as in production:
    // here one for the lab's hosts, handed to the guest on its command
    // line. That is a test's shortcut, not a way to deploy tokens: a
    // build's command line is readable by anyone who can fetch boot files
    // (docs/boot.md).
    let token = stdout(&ok(east.cairn_cli(&["token", "create", "--scope", LAB])))
        .trim()
        .to_string();
    // The builds, added at east: their command line names the DNS of
    // whichever node serves the boot (`${server}`).
    let append = format!(
        "console=ttyS0 quiet cairn.dns=${{server}}:{} cairn.domain=${{domain}} \
         cairn.host=${{hostname}} cairn.image=${{image}} cairn.token={token}",
        ports.dns
    );
    for b in ["build-1", "build-2"] {
        let dir = build_dir(&assets, b);
        ok(east.cairn_cli(&image_add(&dir, b, &append)));
    }
    // West holds the host on build-2, and every file of build-2, checked.
    wait_until("build-2 at west", Duration::from_secs(90), || {
        let list = stdout(&west.cairn_cli(&["image", "list"]));
        list.split("\nbuild-2").nth(1).is_some_and(|b| {
            b.lines()
                .find(|l| l.contains("west/node-1:"))
                .is_some_and(|l| l.ends_with(" 3/3"))
        })
    });
    wait_until(
        "the host on build-2 at west",
        Duration::from_secs(30),
        || {
            let out = run_tool(
                &west.url(1),
                "ldapsearch",
                Some((ADMIN, PASSWORD)),
                &["-b", LAB, "-s", "base", "cairnSetting"],
                None,
            );
            stdout(&out).contains("boot.image=build-2")
                && run_tool(
                    &west.url(1),
                    "ldapsearch",
                    Some((ADMIN, PASSWORD)),
                    &["-b", HOST, "-s", "base", "1.1"],
                    None,
                )
                .status
                .success()
        },
    );
    let mut snippet = String::new();
    wait_until("west's boot addresses", Duration::from_secs(30), || {
        let out = west.cairn_cli(&["dhcp", "snippet", "--format", "dnsmasq", "--site", "west"]);
        snippet = stdout(&out);
        out.status.success()
    });
    assert!(snippet.contains(&format!(",,{west_ip}\n")), "{snippet}");

    // The cut: east is gone.
    east.kill9(1);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("west.conf");
    std::fs::write(&conf, &snippet).unwrap();
    let dhcp_log = dir.path().join("dnsmasq.log");
    let dnsmasq = lan.dnsmasq(&conf, &dhcp_log, &dir.path().join("leases"));
    let console = lan.boot();
    drop(dnsmasq);
    assert_booted(&console, "build-2");
    // The script and the files came from west (`${server}`), and so did
    // the SRV record the guest found the directory by.
    let dns = format!("{west_ip}:{}", ports.dns);
    assert!(console.contains(&format!("cairn.dns={dns} ")), "{console}");
    assert!(
        console.contains(&format!("CAIRN-E2E: pull --dns {dns} --domain example.com")),
        "{console}"
    );
}

/// A directory holding build `name`'s files: the kernel, the shared
/// initramfs, and the build's own one.
fn build_dir(assets: &Path, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("vmlinuz".to_string(), "vmlinuz"),
        ("base.gz".to_string(), "base.gz"),
        (format!("{name}.gz"), "build.gz"),
    ] {
        std::fs::copy(assets.join(from), dir.path().join(to)).unwrap();
    }
    dir
}
