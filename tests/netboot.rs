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

use crate::kit::{Node, bin, has_example_tree, ok, stdout, wait_until};

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

/// The kernel, initrds and boot loader `tests/pxe/assets` builds (the
/// kernel download is cached across runs), next to the binaries.
fn assets(builds: &[&str]) -> PathBuf {
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

/// Adds build `name` with `cairn image add` (the kernel, the shared
/// initramfs, and the build's own one naming it, in that order; a command
/// line telling the guest where the node is), and puts pxelinux in the
/// image root.
fn add_build(n: &Node, assets: &Path, name: &str) {
    let root = n.data.path().join("images");
    for f in ["pxelinux.0", "ldlinux.c32"] {
        std::fs::copy(assets.join(f), root.join(f)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("vmlinuz".to_string(), "vmlinuz"),
        ("base.gz".to_string(), "base.gz"),
        (format!("{name}.gz"), "build.gz"),
    ] {
        std::fs::copy(assets.join(from), dir.path().join(to)).unwrap();
    }
    let append = format!(
        "console=ttyS0 quiet cairn.grpc=10.0.2.2:{} cairn.dns=10.0.2.2:{} \
         cairn.domain=${{domain}} cairn.host=${{hostname}} cairn.image=${{image}}",
        n.grpc.port(),
        n.dns.port()
    );
    ok(n.cairn(&[
        "image",
        "add",
        dir.path().to_str().unwrap(),
        "--name",
        name,
        "--kernel",
        "vmlinuz",
        "--initrd",
        "base.gz",
        "--initrd",
        "build.gz",
        "--append",
        &append,
    ]));
}

/// Boots the guest with `bootfile` as its DHCP boot file and returns its
/// serial console once its `/init` is done (or the boot failed, or the
/// deadline passed).
fn boot(bootfile: &str) -> String {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "512", "-nographic", "-no-reboot"])
        .args(["-uuid", UUID])
        .arg("-netdev")
        .arg(format!("user,id=n0,bootfile={bootfile}"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={MAC}"))
        .args(["-boot", "n"])
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

/// The log lines node `n` wrote from byte `from` on.
fn log_since(n: &Node, from: usize) -> String {
    n.log().get(from..).unwrap_or_default().to_string()
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
    let assets = assets(&["build-1", "build-2"]);
    // Its log says which files it served.
    let n = Node::start_with("redb", &[("CAIRN_LOG", "info")]);
    wait_until("the example tree", Duration::from_secs(20), || {
        has_example_tree(&n.url())
    });
    for b in ["build-1", "build-2"] {
        add_build(&n, &assets, b);
    }
    // The cluster was on build-1 and moved to build-2: its history says so.
    ok(n.tool(
        "ldapadd",
        &[],
        Some(&format!(
            "dn: {LAB}\nobjectClass: cairnCluster\ncn: pxe-lab\ncairnSetting: boot.image=build-1\n\n\
             dn: {HOST}\nobjectClass: cairnHost\ncn: pxe-01\nmacAddress: {MAC}\nnetbootGUID: {UUID}\n"
        )),
    ));
    ok(n.tool(
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {LAB}\nchangetype: modify\ndelete: cairnSetting\ncairnSetting: boot.image=build-1\n-\nadd: cairnSetting\ncairnSetting: boot.image=build-2\n"
        )),
    ));
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
    for f in ["build-2/vmlinuz", "build-2/base.gz", "build-2/build.gz"] {
        assert!(
            log.contains(&format!("file={f} ")),
            "{f} not served:\n{log}"
        );
    }
    assert!(!log.contains("file=build-1/"), "{log}");

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
    for f in ["build-1/vmlinuz", "build-1/base.gz", "build-1/build.gz"] {
        assert!(
            log.contains(&format!("file={f} ")),
            "{f} not served:\n{log}"
        );
    }
    assert!(!log.contains("file=build-2/"), "{log}");

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
    for f in ["build-1/vmlinuz", "build-1/base.gz", "build-1/build.gz"] {
        assert!(
            log.lines()
                .any(|l| l.contains("HTTP boot file client=127.0.0.1:")
                    && l.contains(&format!("file={f} "))),
            "{f} not served over HTTP:\n{log}"
        );
    }
}
