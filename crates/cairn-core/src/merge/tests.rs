use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::csn::{Csn, Origin};

const EAST: u8 = 1;
const WEST: u8 = 2;
const NORTH: u8 = 3;

fn csn(ms: u64, site: u8) -> Csn {
    Csn {
        ms,
        logical: 0,
        origin: Origin::new(Uuid::from_bytes([site; 16]), 0),
        seq: 0,
    }
}

fn entry_uuid(n: u8) -> Uuid {
    Uuid::from_bytes([0xe0 | n; 16])
}

fn values(vs: &[&str]) -> Vec<Value> {
    vs.iter()
        .map(|v| Value::new(*v, v.to_lowercase()))
        .collect()
}

fn attr(op: AttrOp, key: &str, vs: &[&str]) -> AttrChange {
    AttrChange {
        op,
        key: key.to_lowercase(),
        name: key.to_string(),
        values: values(vs),
    }
}

fn name(rdn: &str) -> Name {
    Name {
        parent: Some(entry_uuid(0)),
        rdn: rdn.to_string(),
    }
}

fn add(at: Csn, rdn: &str, attrs: &[(&str, &[&str])]) -> Change {
    Change {
        csn: at,
        uuid: entry_uuid(1),
        op: ChangeOp::Add {
            name: name(rdn),
            attrs: attrs
                .iter()
                .map(|(k, vs)| attr(AttrOp::Add, k, vs))
                .collect(),
        },
        audit: None,
    }
}

fn modify(at: Csn, attrs: Vec<AttrChange>) -> Change {
    Change {
        csn: at,
        uuid: entry_uuid(1),
        op: ChangeOp::Modify { name: None, attrs },
        audit: None,
    }
}

fn rename(at: Csn, rdn: &str) -> Change {
    Change {
        csn: at,
        uuid: entry_uuid(1),
        op: ChangeOp::Modify {
            name: Some(name(rdn)),
            attrs: vec![],
        },
        audit: None,
    }
}

fn delete(at: Csn) -> Change {
    Change {
        csn: at,
        uuid: entry_uuid(1),
        op: ChangeOp::Delete {
            dn: "cn=h1,ou=hosts,dc=example,dc=com".into(),
        },
        audit: None,
    }
}

/// Single-valued in these tests: `description`, and `s` in the property tests.
fn single(key: &str) -> bool {
    key == "description" || key == "s"
}

fn run(changes: &[Change]) -> Option<EntryState> {
    changes.iter().fold(None, |s, c| Some(merge(s, c).0))
}

/// The live entry after `changes`, as `attr → values`.
fn visible(changes: &[Change]) -> Option<BTreeMap<String, Vec<String>>> {
    run(changes)?
        .materialize(single)
        .map(|m| m.attrs.into_iter().collect())
}

fn get(changes: &[Change], key: &str) -> Vec<String> {
    visible(changes)
        .and_then(|m| m.get(key).cloned())
        .unwrap_or_default()
}

fn base() -> Change {
    add(
        csn(10, EAST),
        "cn=h1",
        &[
            ("cn", &["h1"]),
            ("mail", &["a@x"]),
            ("description", &["one"]),
        ],
    )
}

#[test]
fn a_replace_at_one_site_and_a_later_add_at_another_both_take_effect() {
    let replace = modify(csn(20, EAST), vec![attr(AttrOp::Replace, "mail", &["b@x"])]);
    let later_add = modify(csn(21, WEST), vec![attr(AttrOp::Add, "mail", &["c@x"])]);
    assert_eq!(
        get(&[base(), replace.clone(), later_add.clone()], "mail"),
        ["b@x", "c@x"]
    );
    assert_eq!(
        get(&[base(), later_add, replace.clone()], "mail"),
        ["b@x", "c@x"]
    );
    // An add made before the replace (by CSN) is cleared by it, whichever
    // arrives first.
    let earlier_add = modify(csn(19, WEST), vec![attr(AttrOp::Add, "mail", &["c@x"])]);
    assert_eq!(
        get(&[base(), replace.clone(), earlier_add.clone()], "mail"),
        ["b@x"]
    );
    assert_eq!(get(&[base(), earlier_add, replace], "mail"), ["b@x"]);
}

#[test]
fn values_added_at_two_sites_to_one_attribute_are_both_kept() {
    let east = modify(csn(20, EAST), vec![attr(AttrOp::Add, "mail", &["e@x"])]);
    let west = modify(csn(20, WEST), vec![attr(AttrOp::Add, "mail", &["w@x"])]);
    assert_eq!(
        get(&[base(), east.clone(), west.clone()], "mail"),
        ["a@x", "e@x", "w@x"]
    );
    assert_eq!(get(&[base(), west, east], "mail"), ["a@x", "e@x", "w@x"]);
}

#[test]
fn a_single_valued_attribute_keeps_the_value_with_the_highest_csn() {
    let east = modify(
        csn(20, EAST),
        vec![attr(AttrOp::Replace, "description", &["east"])],
    );
    let west = modify(
        csn(20, WEST),
        vec![attr(AttrOp::Replace, "description", &["west"])],
    );
    // Same millisecond: the origin breaks the tie, the same way everywhere.
    assert_eq!(
        get(&[base(), east.clone(), west.clone()], "description"),
        ["west"]
    );
    assert_eq!(get(&[base(), west, east], "description"), ["west"]);
    // Two adds to an attribute that was empty at both sites.
    let no_description = add(csn(10, EAST), "cn=h1", &[("cn", &["h1"])]);
    let a = modify(
        csn(30, WEST),
        vec![attr(AttrOp::Add, "description", &["w"])],
    );
    let b = modify(
        csn(31, EAST),
        vec![attr(AttrOp::Add, "description", &["e"])],
    );
    assert_eq!(
        get(
            &[no_description.clone(), a.clone(), b.clone()],
            "description"
        ),
        ["e"]
    );
    assert_eq!(get(&[no_description, b, a], "description"), ["e"]);
}

#[test]
fn a_deleted_value_comes_back_only_when_added_after_its_delete() {
    let del = modify(csn(20, EAST), vec![attr(AttrOp::Delete, "mail", &["A@X"])]);
    let readd_before = modify(csn(19, WEST), vec![attr(AttrOp::Add, "mail", &["a@x"])]);
    let readd_after = modify(csn(21, WEST), vec![attr(AttrOp::Add, "mail", &["a@x"])]);
    assert!(get(&[base(), del.clone()], "mail").is_empty());
    assert!(get(&[base(), readd_before, del.clone()], "mail").is_empty());
    assert_eq!(
        get(&[base(), readd_after.clone(), del.clone()], "mail"),
        ["a@x"]
    );
    assert_eq!(get(&[base(), del, readd_after], "mail"), ["a@x"]);
}

#[test]
fn deleting_a_whole_attribute_clears_what_was_added_before_it() {
    let clear = modify(csn(20, EAST), vec![attr(AttrOp::Delete, "mail", &[])]);
    let concurrent = modify(csn(15, WEST), vec![attr(AttrOp::Add, "mail", &["w@x"])]);
    let after = modify(csn(25, WEST), vec![attr(AttrOp::Add, "mail", &["z@x"])]);
    assert!(get(&[base(), concurrent.clone(), clear.clone()], "mail").is_empty());
    assert_eq!(get(&[base(), after, clear, concurrent], "mail"), ["z@x"]);
}

#[test]
fn the_name_with_the_highest_csn_wins() {
    let east = rename(csn(20, EAST), "cn=east-name");
    let west = rename(csn(22, WEST), "cn=west-name");
    for order in [
        [base(), east.clone(), west.clone()],
        [west.clone(), east.clone(), base()],
    ] {
        let state = run(&order).expect("state");
        assert_eq!(
            state.materialize(single).expect("live").name.rdn,
            "cn=west-name"
        );
    }
}

#[test]
fn a_delete_wins_over_a_concurrent_modify_and_the_modify_is_reported() {
    let del = delete(csn(20, EAST));
    let concurrent = modify(csn(25, WEST), vec![attr(AttrOp::Add, "mail", &["w@x"])]);
    assert_eq!(visible(&[base(), concurrent.clone(), del.clone()]), None);
    let (state, effect) = merge(run(&[base(), del.clone()]), &concurrent);
    assert_eq!(effect, Effect::ModifyOfDeleted);
    assert!(state.is_tombstone());
    assert_eq!(state.materialize(single), None);
    assert_eq!(Some(state), run(&[base(), concurrent, del]));
}

#[test]
fn a_duplicate_or_an_older_change_at_a_tombstone_is_already_held() {
    let del = delete(csn(20, EAST));
    let after = modify(csn(25, WEST), vec![attr(AttrOp::Add, "mail", &["w@x"])]);
    let before = modify(csn(15, WEST), vec![attr(AttrOp::Add, "mail", &["v@x"])]);
    let (state, first) = merge(run(&[base(), del]), &after);
    assert_eq!(first, Effect::ModifyOfDeleted);
    let (state, again) = merge(Some(state), &after);
    assert_eq!(again, Effect::AlreadyHeld);
    let (_, older) = merge(Some(state), &before);
    assert_eq!(
        older,
        Effect::AlreadyHeld,
        "a value below the tombstone is compacted away"
    );
}

#[test]
fn a_tombstone_keeps_its_name_and_no_values() {
    let state = run(&[base(), delete(csn(20, EAST))]).expect("state");
    assert!(state.is_tombstone());
    assert_eq!(state.name().map(|n| n.1.rdn.as_str()), Some("cn=h1"));
    assert!(state.attrs.is_empty(), "{:?}", state.attrs);
}

#[test]
fn an_add_of_the_same_uuid_after_a_delete_creates_the_entry_again_without_its_old_values() {
    let del = delete(csn(20, EAST));
    let again = add(
        csn(30, WEST),
        "cn=h1",
        &[("cn", &["h1"]), ("description", &["two"])],
    );
    for order in [
        [base(), del.clone(), again.clone()],
        [again.clone(), base(), del.clone()],
        [del.clone(), again.clone(), base()],
    ] {
        let seen = visible(&order).expect("created again");
        assert_eq!(
            seen.get("description").map(Vec::as_slice),
            Some(&["two".to_string()][..])
        );
        assert_eq!(seen.get("mail"), None, "an old value came back: {seen:?}");
    }
}

#[test]
fn the_same_entry_added_at_two_sites_takes_the_later_add() {
    // A host registered at both sites while they were apart: the UUID is
    // derived from its identity, so both adds are of one entry.
    let east = add(csn(20, EAST), "cn=h1", &[("cn", &["h1"]), ("l", &["east"])]);
    let west = add(
        csn(21, WEST),
        "cn=h1",
        &[("cn", &["h1"]), ("st", &["west"])],
    );
    for order in [[east.clone(), west.clone()], [west.clone(), east.clone()]] {
        let seen = visible(&order).expect("live");
        assert_eq!(seen.get("st").map(Vec::len), Some(1));
        assert_eq!(seen.get("l"), None);
        assert_eq!(seen.get("cn").map(Vec::len), Some(1));
    }
}

fn register(at: Csn, rdn: &str, attrs: &[(&str, &[&str])]) -> Change {
    let Change {
        csn,
        uuid,
        op,
        audit,
    } = add(at, rdn, attrs);
    let ChangeOp::Add { name, attrs } = op else {
        unreachable!("add() makes adds")
    };
    Change {
        csn,
        uuid,
        op: ChangeOp::Register { name, attrs },
        audit,
    }
}

fn all_orders(changes: &[Change]) -> Vec<Vec<Change>> {
    if changes.len() <= 1 {
        return vec![changes.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..changes.len() {
        let mut rest = changes.to_vec();
        let first = rest.remove(i);
        for mut tail in all_orders(&rest) {
            tail.insert(0, first.clone());
            out.push(tail);
        }
    }
    out
}

#[test]
fn a_later_registration_at_another_site_keeps_what_was_changed_after_the_first() {
    // East registers the host; an administrator there adds a value, sets
    // a single-valued attribute and moves it; west, apart, registers the
    // same host later, where its rule puts it.
    let changes = [
        register(
            csn(10, EAST),
            "cn=h1",
            &[("cn", &["h1"]), ("mail", &["a@x"])],
        ),
        modify(
            csn(20, EAST),
            vec![
                attr(AttrOp::Add, "mail", &["b@x"]),
                attr(AttrOp::Replace, "description", &["rack 4"]),
            ],
        ),
        rename(csn(25, EAST), "cn=moved"),
        register(
            csn(30, WEST),
            "cn=h1",
            &[("cn", &["h1"]), ("mail", &["a@x"])],
        ),
    ];
    for order in all_orders(&changes) {
        let state = run(&order).expect("state");
        let m = state.materialize(single).expect("live");
        assert_eq!(m.name.rdn, "cn=moved", "the move was undone: {order:?}");
        let seen: BTreeMap<_, _> = m.attrs.into_iter().collect();
        // Values keep the order of their latest adds: west added a@x again.
        assert_eq!(seen["mail"], ["b@x", "a@x"]);
        assert_eq!(seen["description"], ["rack 4"]);
    }
    // An add, by contrast, resets the entry: what was set before it goes.
    let mut with_add = changes.clone();
    with_add[3] = add(csn(30, WEST), "cn=h1", &[("cn", &["h1"])]);
    assert_eq!(get(&with_add, "description"), Vec::<String>::new());
}

#[test]
fn a_host_registered_at_two_sites_keeps_the_first_registrations_creation_stamps() {
    let stamps = |at: u64, site: u8, who: &str| {
        let when = format!("2026120600000{at}Z");
        register(
            csn(at, site),
            "cn=h1",
            &[
                ("cn", &["h1"]),
                ("createtimestamp", &[when.as_str()]),
                ("creatorsname", &[who]),
                ("modifytimestamp", &[when.as_str()]),
            ],
        )
    };
    let stamped = |k: &str| k.ends_with("timestamp") || k == "creatorsname";
    let shown = |changes: &[Change]| -> BTreeMap<String, Vec<String>> {
        let m = run(changes).expect("state").materialize(stamped);
        m.expect("live").attrs.into_iter().collect()
    };
    let changes = [
        stamps(1, EAST, "cn=rule-east"),
        stamps(3, WEST, "cn=rule-west"),
    ];
    for order in all_orders(&changes) {
        let seen = shown(&order);
        assert_eq!(seen["createtimestamp"], ["20261206000001Z"], "{order:?}");
        assert_eq!(seen["creatorsname"], ["cn=rule-east"], "{order:?}");
        // The latest change's, as any single value.
        assert_eq!(seen["modifytimestamp"], ["20261206000003Z"], "{order:?}");
    }
    // Deleted and registered again, the host was created again.
    let again = [
        changes[0].clone(),
        changes[1].clone(),
        delete(csn(5, EAST)),
        stamps(7, WEST, "cn=rule-west"),
    ];
    for order in all_orders(&again) {
        let seen = shown(&order);
        assert_eq!(seen["createtimestamp"], ["20261206000007Z"], "{order:?}");
        assert_eq!(seen["creatorsname"], ["cn=rule-west"], "{order:?}");
    }
}

#[test]
fn a_state_nothing_registered_reads_the_same_in_the_form_before_registrations() {
    let written = run(&[
        base(),
        modify(csn(20, WEST), vec![attr(AttrOp::Delete, "mail", &["a@x"])]),
        rename(csn(30, EAST), "cn=h2"),
    ])
    .expect("state");
    let v1 = written.to_v1().expect("nothing registered it");
    assert_eq!(EntryState::from(v1), written);
    let registered = run(&[base(), register(csn(20, WEST), "cn=h1", &[("cn", &["h1"])])]);
    assert_eq!(registered.expect("state").to_v1(), None);
}

#[test]
fn what_a_write_deleted_or_replaced_since_the_first_registration_stays_so() {
    // East registers the host; an administrator there renames it (its old
    // cn value deleted), deletes one of its MACs, replaces the rule's
    // description and sets its model; west, apart, registers it later
    // with what the host reports.
    let reported: &[(&str, &[&str])] = &[
        ("cn", &["h1"]),
        ("mac", &["m1", "m2"]),
        ("description", &["registered by rule"]),
        ("model", &["R640"]),
    ];
    let changes = [
        register(csn(10, EAST), "cn=h1", reported),
        Change {
            op: ChangeOp::Modify {
                name: Some(name("cn=web1")),
                attrs: vec![
                    attr(AttrOp::Delete, "cn", &["h1"]),
                    attr(AttrOp::Add, "cn", &["web1"]),
                ],
            },
            ..modify(csn(20, EAST), vec![])
        },
        modify(csn(21, EAST), vec![attr(AttrOp::Delete, "mac", &["m2"])]),
        modify(
            csn(22, EAST),
            vec![
                attr(AttrOp::Replace, "description", &["web tier"]),
                attr(AttrOp::Replace, "model", &["R650"]),
            ],
        ),
        register(csn(30, WEST), "cn=h1", reported),
    ];
    let single = |k: &str| k == "description" || k == "model";
    for order in all_orders(&changes) {
        let state = run(&order).expect("state");
        let m = state.materialize(single).expect("live");
        assert_eq!(m.name.rdn, "cn=web1", "{order:?}");
        let seen: BTreeMap<_, _> = m.attrs.into_iter().collect();
        assert_eq!(seen["cn"], ["web1"], "{order:?}");
        assert_eq!(seen["mac"], ["m1"], "{order:?}");
        assert_eq!(seen["description"], ["web tier"], "{order:?}");
        assert_eq!(seen["model"], ["R650"], "{order:?}");
    }
    // A value the host reports that no write touched follows the later
    // registration; one a write added again after deleting it counts.
    let mut more = changes.to_vec();
    more.push(modify(
        csn(40, EAST),
        vec![attr(AttrOp::Add, "mac", &["m2"])],
    ));
    let seen = visible(&more).expect("live");
    assert_eq!(seen["mac"], ["m1", "m2"]);
}

#[test]
fn a_purge_keeps_a_hosts_deletes_of_what_registrations_report_and_no_others() {
    let host = crate::entry::host_entry_uuid("mac:m1");
    let on_host = |c: Change| Change { uuid: host, ..c };
    let changes = [
        register(csn(10, EAST), "cn=h1", &[("cn", &["h1"]), ("mac", &["m1"])]),
        modify(
            csn(12, EAST),
            vec![attr(AttrOp::Add, "setting", &["pw=secret"])],
        ),
        modify(
            csn(14, EAST),
            vec![attr(AttrOp::Delete, "setting", &["pw=secret"])],
        ),
        modify(csn(15, EAST), vec![attr(AttrOp::Delete, "mac", &["m1"])]),
    ]
    .map(on_host);
    let mut state = run(&changes).expect("state");
    state.purge(csn(100, 0), |key| key == "mac" || key == "cn");
    // The setting's value, deleted by a write, is gone from the state.
    assert!(!state.attrs.contains_key("setting"), "{state:?}");
    // The MAC's delete stays: a registration reporting m1 later must not
    // bring it back.
    assert_eq!(state.attrs["mac"].values["m1"].deleted, Some(csn(15, EAST)));
    let (later, _) = merge(
        Some(state),
        &on_host(register(csn(200, WEST), "cn=h1", &[("mac", &["m1"])])),
    );
    assert_eq!(
        later
            .materialize(single)
            .unwrap()
            .attrs
            .iter()
            .find(|(a, _)| a == "mac"),
        None
    );
}

#[test]
fn a_registration_after_a_delete_brings_the_entry_back_where_it_registers() {
    let changes = [
        register(
            csn(10, EAST),
            "cn=h1",
            &[("cn", &["h1"]), ("mail", &["a@x"])],
        ),
        rename(csn(15, EAST), "cn=moved"),
        modify(
            csn(16, EAST),
            vec![attr(AttrOp::Replace, "description", &["old"])],
        ),
        delete(csn(20, EAST)),
        register(csn(30, WEST), "cn=again", &[("cn", &["h1"])]),
    ];
    for order in all_orders(&changes) {
        let state = run(&order).expect("state");
        let m = state.materialize(single).expect("registered again");
        assert_eq!(m.name.rdn, "cn=again", "{order:?}");
        let seen: BTreeMap<_, _> = m.attrs.into_iter().collect();
        assert_eq!(seen.get("description"), None, "an old value came back");
        assert_eq!(seen.get("mail"), None, "an old value came back");
    }
    // A registration older than the delete leaves it deleted.
    let mut late_delete = changes.clone();
    late_delete[3] = delete(csn(40, EAST));
    assert!(run(&late_delete).is_some_and(|s| s.is_tombstone()));
}

#[test]
fn a_modify_a_delete_won_over_stays_away_when_a_registration_brings_the_entry_back() {
    let concurrent = modify(
        csn(25, WEST),
        vec![attr(AttrOp::Replace, "description", &["on the tombstone"])],
    );
    let back = register(csn(40, NORTH), "cn=h1", &[("cn", &["h1"])]);
    let kept = run(&[
        base(),
        delete(csn(20, EAST)),
        concurrent.clone(),
        back.clone(),
    ]);
    let kept = kept.and_then(|s| s.materialize(single)).expect("back");
    // A site that purged the tombstone before the modify arrived holds
    // only the modify and the registration: it shows the same.
    let purged = run(&[concurrent, back]).and_then(|s| s.materialize(single));
    assert_eq!(Some(&kept), purged.as_ref());
    assert!(
        !kept.attrs.iter().any(|(a, _)| a == "description"),
        "{kept:?}"
    );
}

#[test]
fn a_change_that_arrives_before_the_add_it_follows_is_kept_until_the_add_comes() {
    let later = modify(csn(20, WEST), vec![attr(AttrOp::Add, "mail", &["w@x"])]);
    let (early, _) = merge(None, &later);
    assert!(!early.is_live());
    assert_eq!(early.materialize(single), None);
    assert_eq!(get(&[later, base()], "mail"), ["a@x", "w@x"]);
}

#[test]
fn applying_a_change_twice_changes_nothing_and_says_so() {
    let m = modify(csn(20, WEST), vec![attr(AttrOp::Add, "mail", &["w@x"])]);
    let once = run(&[base(), m.clone()]);
    let (twice, effect) = merge(once.clone(), &m);
    assert_eq!(effect, Effect::AlreadyHeld);
    assert_eq!(Some(twice), once);
    let (_, effect) = merge(once, &base());
    assert_eq!(effect, Effect::AlreadyHeld);
}

#[test]
fn values_keep_the_order_they_were_given_in() {
    let c = add(csn(10, EAST), "cn=h1", &[("member", &["z", "b", "y", "a"])]);
    assert_eq!(get(&[c], "member"), ["z", "b", "y", "a"]);
}

#[test]
fn values_that_differ_only_by_the_equality_rule_are_one_value() {
    let east = modify(csn(20, EAST), vec![attr(AttrOp::Add, "mail", &["New@X"])]);
    let west = modify(csn(21, WEST), vec![attr(AttrOp::Add, "mail", &["new@x"])]);
    assert_eq!(
        get(&[base(), east.clone(), west.clone()], "mail"),
        ["a@x", "new@x"]
    );
    assert_eq!(get(&[base(), west, east], "mail"), ["a@x", "new@x"]);
}

/// The nil origin's fields (the lost-and-found container, entries from
/// before origins) survive a rebuild's restriction, unless a delete below
/// the horizon overrode them: then they go with it, and the peer's copy
/// alone decides (it may have purged the entry or the value).
#[test]
fn a_rebuild_forgets_a_legacy_add_only_with_the_delete_that_overrode_it() {
    let nil = |ms: u64| Csn {
        ms,
        logical: 0,
        origin: Origin::new(Uuid::nil(), 0),
        seq: 0,
    };
    let horizon = csn(100, NORTH);
    let legacy = add(
        nil(0),
        "cn=h1",
        &[("cn", &["h1"]), ("mail", &["a@x", "b@x"])],
    );
    // Nothing overrode it: it stays whole.
    let mut s = run(std::slice::from_ref(&legacy)).unwrap();
    let kept = s.clone();
    assert!(s.restrict(horizon));
    assert_eq!(s, kept);
    // Deleted below the horizon: the entry goes, not just its delete.
    let mut s = run(&[legacy.clone(), delete(csn(50, EAST))]).unwrap();
    assert!(!s.restrict(horizon), "{s:?}");
    assert!(!s.is_live());
    // Deleted at or above it: that is this site's own, and stays.
    let mut s = run(&[legacy.clone(), delete(csn(150, EAST))]).unwrap();
    assert!(s.restrict(horizon));
    assert!(s.is_tombstone());
    // A value deleted below the horizon goes with its delete; the others
    // stay.
    let mut s = run(&[
        legacy.clone(),
        modify(csn(50, EAST), vec![attr(AttrOp::Delete, "mail", &["a@x"])]),
    ])
    .unwrap();
    assert!(s.restrict(horizon));
    let m = s.materialize(single).unwrap();
    let mail = m.attrs.iter().find(|(k, _)| k == "mail").map(|(_, v)| v);
    assert_eq!(mail, Some(&vec!["b@x".to_string()]));
    assert!(!s.attrs["mail"].values.contains_key("a@x"), "{s:?}");
    // A whole attribute replaced below the horizon: its legacy values go
    // with the replace.
    let mut s = run(&[
        legacy,
        modify(csn(50, EAST), vec![attr(AttrOp::Replace, "mail", &["c@x"])]),
    ])
    .unwrap();
    assert!(s.restrict(horizon));
    assert!(!s.attrs.contains_key("mail"), "{s:?}");
}

#[test]
fn max_csn_is_the_latest_change_the_entry_holds() {
    let m = modify(csn(42, WEST), vec![attr(AttrOp::Add, "mail", &["w@x"])]);
    let state = run(&[base(), m]).expect("state");
    assert_eq!(state.max_csn(), Some(csn(42, WEST)));
}

// ---- Property tests -------------------------------------------------------

const KEYS: &[&str] = &["m", "s", "n"];
const VALUES: &[&str] = &["a", "A", "b", "c"];

fn arb_attr() -> impl Strategy<Value = AttrChange> {
    (
        prop_oneof![
            Just(AttrOp::Add),
            Just(AttrOp::Delete),
            Just(AttrOp::Replace)
        ],
        prop::sample::select(KEYS),
        prop::sample::subsequence(VALUES, 0..=3),
    )
        .prop_map(|(op, key, vs)| AttrChange {
            op,
            key: key.to_string(),
            name: key.to_string(),
            values: values(&vs),
        })
}

fn arb_op() -> impl Strategy<Value = ChangeOp> {
    let rdn = prop::sample::select(&["cn=x", "cn=y", "cn=z"][..]);
    let name = (prop::option::of(0u8..2), rdn).prop_map(|(p, rdn)| Name {
        parent: p.map(entry_uuid),
        rdn: rdn.to_string(),
    });
    // One change per attribute, as the leader folds them.
    fn attrs() -> impl Strategy<Value = Vec<AttrChange>> {
        prop::collection::vec(arb_attr(), 0..3).prop_map(|mut v| {
            v.sort_by(|a, b| a.key.cmp(&b.key));
            v.dedup_by(|a, b| a.key == b.key);
            v
        })
    }
    prop_oneof![
        2 => (name.clone(), attrs()).prop_map(|(name, attrs)| ChangeOp::Add { name, attrs }),
        2 => (name.clone(), attrs()).prop_map(|(name, attrs)| ChangeOp::Register { name, attrs }),
        5 => (prop::option::of(name), attrs()).prop_map(|(name, attrs)| ChangeOp::Modify { name, attrs }),
        1 => prop::sample::select(&["cn=x,o=a", "cn=y,o=b"][..])
            .prop_map(|dn| ChangeOp::Delete { dn: dn.to_string() }),
    ]
}

/// Changes to two entries from three sites; every change has its own CSN,
/// as stamping guarantees.
fn arb_changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec(
        (
            0u64..12,
            prop::sample::select(&[EAST, WEST, NORTH][..]),
            0u8..2,
            arb_op(),
        ),
        1..24,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (ms, site, e, op))| {
                // The first entry is a host's (registrations and the
                // purge's rule for them); the second an ordinary entry,
                // which no site registers.
                let (uuid, op) = match (e, op) {
                    (0, op) => (crate::entry::host_entry_uuid("e1"), op),
                    (_, ChangeOp::Register { name, attrs }) => {
                        (entry_uuid(2), ChangeOp::Add { name, attrs })
                    }
                    (_, op) => (entry_uuid(2), op),
                };
                Change {
                    csn: Csn {
                        seq: i as u32,
                        ..csn(ms, site)
                    },
                    uuid,
                    op,
                    audit: None,
                }
            })
            .collect()
    })
}

fn apply_all<'a>(changes: impl IntoIterator<Item = &'a Change>) -> BTreeMap<Uuid, EntryState> {
    let mut states: BTreeMap<Uuid, EntryState> = BTreeMap::new();
    for c in changes {
        let (s, _) = merge(states.remove(&c.uuid), c);
        states.insert(c.uuid, s);
    }
    states
}

/// The entries reads see, by UUID (entries that are not live are absent).
fn visible_all(states: &BTreeMap<Uuid, EntryState>) -> BTreeMap<Uuid, Materialized> {
    states
        .iter()
        .filter_map(|(u, s)| Some((*u, s.materialize(single)?)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Commutative: any order of the same changes gives the same states.
    #[test]
    fn any_order_of_the_same_changes_gives_the_same_state(
        (changes, shuffled) in arb_changes().prop_flat_map(|c| (Just(c.clone()), Just(c).prop_shuffle()))
    ) {
        prop_assert_eq!(apply_all(&changes), apply_all(&shuffled));
    }

    /// Idempotent: duplicates, wherever they fall, change nothing.
    #[test]
    fn duplicated_changes_change_nothing(
        (changes, with_duplicates) in arb_changes().prop_flat_map(|c| {
            let n = c.len();
            (Just(c.clone()), prop::collection::vec(0..n, 0..n * 2))
                .prop_map(|(c, extra)| {
                    let mut all = c.clone();
                    all.extend(extra.into_iter().map(|i| c[i].clone()));
                    (c, all)
                })
                .prop_flat_map(|(c, all)| (Just(c), Just(all).prop_shuffle()))
        })
    ) {
        prop_assert_eq!(apply_all(&changes), apply_all(&with_duplicates));
    }

    /// Associative: folding two halves separately into the same starting
    /// state and then each other's changes gives the same as one run — two
    /// sites that exchange what they have end equal.
    #[test]
    fn two_sites_that_exchange_their_changes_end_equal(
        (changes, split) in arb_changes().prop_flat_map(|c| { let n = c.len(); (Just(c), 0..=n) })
    ) {
        let (mine, theirs) = changes.split_at(split);
        let here = apply_all(mine.iter().chain(theirs));
        let there = apply_all(theirs.iter().chain(mine));
        prop_assert_eq!(&here, &there);
        prop_assert_eq!(here, apply_all(&changes));
    }

    /// Joining one site's states into another's gives the states of
    /// every change of both, as merging them one by one does (how a site
    /// is rebuilt from a peer).
    #[test]
    fn joining_two_sites_states_equals_merging_all_their_changes(
        (changes, split) in arb_changes().prop_flat_map(|c| { let n = c.len(); (Just(c), 0..=n) })
    ) {
        let (mine, theirs) = changes.split_at(split);
        let mut joined = apply_all(mine);
        for (uuid, state) in apply_all(theirs) {
            match joined.get_mut(&uuid) {
                Some(s) => { s.join(&state); }
                None => { joined.insert(uuid, state); }
            }
        }
        prop_assert_eq!(joined, apply_all(&changes));
    }

    /// Purging below a horizon that every site has passed (every change
    /// below it has arrived; some above it have too) never changes what
    /// later changes make visible.
    #[test]
    fn purging_below_the_horizon_changes_no_visible_result(
        changes in arb_changes(),
        horizon_ms in 0u64..14,
        arrived_early in any::<prop::sample::Index>(),
    ) {
        let horizon = csn(horizon_ms, 0);
        let (below, above): (Vec<&Change>, Vec<&Change>) =
            changes.iter().partition(|c| c.csn < horizon);
        let (early, late) = above.split_at(arrived_early.index(above.len() + 1));
        let mut purged = apply_all(below.iter().chain(early).copied());
        // What the store's purge does: whole states that expired go, the
        // others forget what is below the horizon.
        purged.retain(|_, s| !s.expired(horizon));
        for s in purged.values_mut() {
            s.purge(horizon, |_| true);
            // Nothing left that can never count again: a write's add
            // below the attribute's clear or the value's delete.
            for a in s.attrs.values() {
                for v in a.values.values() {
                    let dead = v.added.as_ref().is_some_and(|x| {
                        a.cleared.is_some_and(|c| x.0 < c) || v.deleted.is_some_and(|d| x.0 <= d)
                    });
                    prop_assert!(!dead, "a dead add left after a purge: {:?}", s);
                }
            }
        }
        for c in late {
            let (s, _) = merge(purged.remove(&c.uuid), c);
            purged.insert(c.uuid, s);
        }
        prop_assert_eq!(visible_all(&purged), visible_all(&apply_all(&changes)));
    }

    /// What every merge keeps to: a tombstone shows nothing, a single-valued
    /// attribute shows at most one value, and no value shows twice.
    #[test]
    fn materialized_entries_keep_the_invariants(changes in arb_changes()) {
        for state in apply_all(&changes).values() {
            prop_assert_eq!(state.is_tombstone() && state.is_live(), false);
            let Some(m) = state.materialize(single) else { continue };
            for (name, vs) in &m.attrs {
                prop_assert!(!vs.is_empty());
                if single(name) { prop_assert_eq!(vs.len(), 1); }
                let mut keys: Vec<String> = vs.iter().map(|v| v.to_lowercase()).collect();
                keys.sort();
                keys.dedup();
                prop_assert_eq!(keys.len(), vs.len());
            }
        }
    }
}
