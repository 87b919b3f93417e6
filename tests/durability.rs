//! No acknowledged write is lost: kill -9 in the middle of a stream of adds,
//! restart, and every add the server acknowledged is there.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::LdapConn;

use crate::kit::*;

fn kill_during_adds(engine: &'static str) {
    let mut n = Node::start_with(engine, &[]);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (acked, count, url) = (acked.clone(), count.clone(), n.url());
        std::thread::spawn(move || {
            let mut ldap = LdapConn::new(&url).unwrap();
            ldap.simple_bind(ADMIN, PASSWORD)
                .unwrap()
                .success()
                .unwrap();
            for i in 0.. {
                let cn = format!("k9-{i}");
                let dn = format!("cn={cn},{PROD_A}");
                let res = ldap.add(
                    &dn,
                    vec![
                        ("objectClass", HashSet::from(["cairnHost"])),
                        ("cn", HashSet::from([cn.as_str()])),
                    ],
                );
                match res {
                    Ok(r) if r.rc == 0 => {
                        acked.lock().unwrap().push(dn);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    // The server is gone: stop.
                    _ => return,
                }
            }
        })
    };
    wait_until("200 acknowledged adds", Duration::from_secs(120), || {
        count.load(Ordering::SeqCst) >= 200
    });
    n.kill9();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    n.restart();
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", PROD_A, "-s", "one", "(cn=k9-*)", "1.1"],
        None,
    )));
    let present: HashSet<String> = dns(&out).into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|d| !present.contains(*d)).collect();
    assert!(
        lost.is_empty(),
        "{engine}: {} acknowledged adds lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // At most the one add in flight at the kill may exist unacknowledged.
    assert!(
        present.len() <= acked.len() + 1,
        "{engine}: {} present, {} acked",
        present.len(),
        acked.len()
    );
}

#[test]
fn kill9_during_adds_loses_no_acknowledged_add_redb() {
    kill_during_adds("redb");
}

#[test]
fn kill9_during_adds_loses_no_acknowledged_add_sled() {
    kill_during_adds("sled");
}

/// Runs `cairnd --config FILE` and expects it to refuse to start: it
/// must exit with an error within the deadline. Returns what it printed.
fn refuses_to_start(config: &std::path::Path) -> String {
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
            panic!("cairnd started on damaged data instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 10: a node whose files are damaged refuses to start with a
/// message naming the file; it never starts on an empty store in place of
/// a damaged one. A one-member site, so the node has a Raft log too.
#[test]
fn issue_10_damaged_files_are_refused_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    let ports = Ports {
        ldap: free_port(),
        grpc: free_port(),
        peer: free_port(),
        dns: free_dns_port(),
        http: free_port(),
    };
    let dir = data.path().join("node-1");
    let config = data.path().join("node-1.toml");
    std::fs::write(&config, node_config(1, &dir, ports, &[1])).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", ports.ldap).parse().unwrap();
    let start = || {
        let mut c = cairnd().arg("--config").arg(&config).spawn().unwrap();
        wait_listening(&mut c, addr);
        c
    };
    let mut node = start();
    // The site forms and takes a write.
    let url = format!("ldap://{addr}");
    wait_until("a write", Duration::from_secs(60), || {
        run_tool(
            &url,
            "ldapadd",
            Some((ADMIN, PASSWORD)),
            &[],
            Some(&format!(
                "dn: cn=d1,{PROD_A}\nobjectClass: cairnHost\ncn: d1\n"
            )),
        )
        .status
        .success()
    });
    node.kill().unwrap();
    node.wait().unwrap();
    let store = dir.join("cairn.redb");
    let state = dir.join("raft").join("state");
    let original = std::fs::read(&store).unwrap();
    let original_state = std::fs::read(&state).unwrap();

    // The store's header overwritten.
    let mut bad = original.clone();
    for b in &mut bad[..512] {
        *b = 0xa5;
    }
    std::fs::write(&store, &bad).unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains(&store.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        bad,
        "the damaged store was changed"
    );

    // The store emptied (or lost) while the Raft log remains.
    std::fs::write(&store, b"").unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains("cairn.redb") && err.contains("raft"), "{err}");
    std::fs::remove_file(&store).unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains("cairn.redb"), "{err}");
    assert!(
        !store.exists(),
        "an empty store was created in place of the lost one"
    );

    // The Raft log's state file (the vote) damaged.
    std::fs::write(&store, &original).unwrap();
    let mut bad = original_state.clone();
    let last = bad.len() - 1;
    bad.truncate(last);
    bad[0] ^= 0xff;
    std::fs::write(&state, &bad).unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains(&state.display().to_string()), "{err}");

    // Repaired by hand, the node starts and still has its data.
    std::fs::write(&state, &original_state).unwrap();
    let mut node = start();
    wait_until(
        "the entry after the repair",
        Duration::from_secs(60),
        || {
            let out = run_tool(
                &url,
                "ldapsearch",
                Some((ADMIN, PASSWORD)),
                &["-b", &format!("cn=d1,{PROD_A}"), "-s", "base", "1.1"],
                None,
            );
            out.status.success() && dns(&stdout(&out)).len() == 1
        },
    );
    node.kill().unwrap();
    node.wait().unwrap();
}
