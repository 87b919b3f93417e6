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
