//! Two linked sites in one process (`cairnd dev --sites 2`: east on
//! 127.0.0.1–3, west on 127.0.0.4–6), driven by OpenLDAP's tools.

use std::time::{Duration, Instant};

use crate::kit::*;

fn has_value(site: &Site, node: u64, dn: &str, attr: &str, value: &str) -> bool {
    let out = site.tool(node, "ldapsearch", &["-b", dn, "-s", "base", attr], None);
    out.status.success() && stdout(&out).contains(&format!("{attr}: {value}"))
}

/// Issue 11: west starts empty and gets the example tree from east; an
/// `ldapmodify` at a node of east is read by `ldapsearch` at every node of
/// west, and one at west at every node of east; every node of both sites
/// ends with the same export.
#[test]
fn issue_11_a_write_at_one_site_is_read_at_every_node_of_the_other() {
    let site = Site::start_sites(2, 3);
    for node in 1..=6 {
        wait_until(
            "the example tree at every node of both sites",
            Duration::from_secs(60),
            || {
                let out = site.tool(
                    node,
                    "ldapsearch",
                    &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
                    None,
                );
                out.status.success() && dns(&stdout(&out)).len() == 4
            },
        );
    }
    let east = format!("cn=east,ou=sites,{SUFFIX}");
    let started = Instant::now();
    ok(site.tool(
        2,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {east}\nchangetype: modify\nreplace: description\ndescription: written at east\n"
        )),
    ));
    for node in 4..=6 {
        wait_until(
            "east's write at every node of west",
            Duration::from_secs(20),
            || has_value(&site, node, &east, "description", "written at east"),
        );
    }
    eprintln!(
        "east to all of west: {:?} (with the tools' own start-up)",
        started.elapsed()
    );
    let west = format!("cn=west,ou=sites,{SUFFIX}");
    ok(site.tool(
        5,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {west}\nchangetype: modify\nreplace: description\ndescription: written at west\n"
        )),
    ));
    for node in 1..=3 {
        wait_until(
            "west's write at every node of east",
            Duration::from_secs(20),
            || has_value(&site, node, &west, "description", "written at west"),
        );
    }
    // Both sites' nodes published themselves, and both sites see all six.
    for node in [1, 4] {
        wait_until("six cairnNode entries", Duration::from_secs(30), || {
            let out = site.tool(
                node,
                "ldapsearch",
                &["-b", SUFFIX, "(objectClass=cairnNode)", "1.1"],
                None,
            );
            out.status.success() && dns(&stdout(&out)).len() == 6
        });
    }
    wait_until(
        "identical exports at all six nodes",
        Duration::from_secs(30),
        || {
            let first = export_at(&site.url(1));
            first.is_ok() && (2..=6).all(|n| export_at(&site.url(n)) == first)
        },
    );
}
