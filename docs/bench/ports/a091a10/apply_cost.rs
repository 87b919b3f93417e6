//! `crates/cairn-store/examples/apply_cost.rs` ported to a091a10, the
//! release before federation, so that `docs/bench/apply a091a10 ...`
//! counts that release's store the same way: the same entries, the same
//! writes in the same batches, the same allocator. At a091a10 there was no
//! plan: the node that took a write prepared it (UUID, stamp, hashed
//! passwords) and every node, the leader included, applied the prepared
//! operations themselves with `Directory::apply_committed` (what its
//! state machine did with each log entry). `docs/bench/apply` copies this
//! file into a091a10's work tree when it counts that commit.
//!
//! Everything below the first line of code is the example at HEAD with
//! only what a091a10's API needs changed (no CSNs, no audit record).

use std::sync::Arc;
use std::time::Instant;

use cairn_core::dn::Dn;
use cairn_core::entry::{Entry, Stamp};
use cairn_core::modify::{ModOp, Modification};
use cairn_core::schema::Schema;
use cairn_store::engine::{self, Batch, EngineKind, Table};
use cairn_store::{Directory, WriteOp};
use uuid::Uuid;

// The allocator cairnd runs with: allocation is a large part of the cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUFFIX: &str = "dc=example,dc=com";
const BASE: &str = "ou=bench,dc=example,dc=com";

struct Site {
    nodes: Vec<Directory>,
    applied: u64,
    _tmp: Vec<tempfile::TempDir>,
}

fn dn(s: &str) -> Dn {
    Dn::parse(s).expect("a valid DN")
}

fn stamp() -> Stamp {
    Stamp {
        who: dn("cn=admin,dc=example,dc=com"),
        now: "20261205000000Z".into(),
    }
}

fn add(dn_: &str, uuid: u128, attrs: Vec<(&str, Vec<String>)>) -> WriteOp {
    WriteOp::Add {
        entry: Entry {
            dn: dn(dn_),
            attrs: attrs
                .into_iter()
                .map(|(a, v)| (a.to_string(), v.into_iter().collect()))
                .collect(),
        },
        uuid: Uuid::from_u128(uuid),
        stamp: stamp(),
    }
}

/// A host as `cairn bench` loads it.
fn host(n: usize) -> WriteOp {
    let one = |v: String| vec![v];
    let (a, b, c) = ((n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    add(
        &format!("cn=host-{n},{BASE}"),
        (1u128 << 100) + n as u128,
        vec![
            ("objectClass", one("cairnHost".into())),
            ("cn", one(format!("host-{n}"))),
            (
                "netbootGUID",
                one(format!("{:08x}-0000-4000-8000-{n:012x}", n)),
            ),
            (
                "macAddress",
                one(format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")),
            ),
            ("ipHostNumber", one(format!("10.{a}.{b}.{c}"))),
            (
                "cairnSetting",
                vec![
                    format!("vmotion.vlan={}", n % 4000),
                    "ntp.servers=10.0.0.1,10.0.0.2".to_string(),
                ],
            ),
            ("description", one(format!("bench host {n}"))),
        ],
    )
}

/// A new host as `cairn bench`'s add workload writes it.
fn new_host(n: usize) -> WriteOp {
    add(
        &format!("cn=w-{n},{BASE}"),
        (2u128 << 100) + n as u128,
        vec![
            ("objectClass", vec!["cairnHost".into()]),
            ("cn", vec![format!("w-{n}")]),
        ],
    )
}

fn modify(n: usize, k: usize) -> WriteOp {
    WriteOp::Modify {
        dn: dn(&format!("cn=host-{n},{BASE}")),
        mods: vec![Modification {
            op: ModOp::Replace,
            attr: "description".into(),
            values: vec![format!("bench host {n} rev {k}").into_bytes()],
        }],
        stamp: stamp(),
    }
}

impl Site {
    fn new(nodes: usize) -> Site {
        let schema = Arc::new(Schema::builtin());
        let mut dirs = vec![];
        let mut tmp = vec![];
        for _ in 0..nodes {
            let t = tempfile::tempdir().expect("a temporary directory");
            dirs.push(Directory::new(
                engine::open(EngineKind::Redb, t.path()).expect("a store"),
                schema.clone(),
                vec![dn(SUFFIX)],
            ));
            tmp.push(t);
        }
        Site {
            nodes: dirs,
            applied: 0,
            _tmp: tmp,
        }
    }

    /// One log entry: prepared at node 0, applied at every node.
    fn write(&mut self, ops: Vec<WriteOp>) {
        let leader = &self.nodes[0];
        let ops: Vec<WriteOp> = ops
            .into_iter()
            .map(|o| leader.prepare(o).expect("a valid write"))
            .collect();
        self.applied += 1;
        let mut meta = Batch::default();
        meta.put(
            Table::Meta,
            b"last_applied".to_vec(),
            self.applied.to_be_bytes().to_vec(),
        );
        for node in &self.nodes {
            for r in node
                .apply_committed(ops.iter(), &meta, false)
                .expect("an apply")
            {
                r.expect("a write the directory takes");
            }
        }
    }
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The measured part: `batches` log entries of `batch` writes each.
#[inline(never)]
fn measure(site: &mut Site, workload: &str, entries: usize, batch: usize, batches: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut k = 0;
    for b in 0..batches {
        let ops = (0..batch)
            .map(|i| {
                k += 1;
                match workload {
                    "add" => new_host(b * batch + i),
                    "host" => host(entries + b * batch + i),
                    _ => modify(rng.below(entries), k),
                }
            })
            .collect();
        site.write(ops);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    let workload = args.first().map(String::as_str).unwrap_or("modify");
    assert!(
        matches!(workload, "modify" | "add" | "host"),
        "workload: modify, add or host"
    );
    let entries = arg(1, 10_000);
    let batch = arg(2, 16);
    let batches = arg(3, 200);
    let mut site = Site::new(3);
    site.write(vec![
        add(
            SUFFIX,
            1,
            vec![
                (
                    "objectClass",
                    vec!["dcObject".into(), "organization".into()],
                ),
                ("dc", vec!["example".into()]),
                ("o", vec!["Example".into()]),
            ],
        ),
        add(
            BASE,
            2,
            vec![
                ("objectClass", vec!["organizationalUnit".into()]),
                ("ou", vec!["bench".into()]),
            ],
        ),
    ]);
    for start in (0..entries).step_by(256) {
        site.write((start..(start + 256).min(entries)).map(host).collect());
    }
    let t = Instant::now();
    measure(&mut site, workload, entries, batch, batches);
    let writes = batch * batches;
    println!(
        "{workload}: {writes} writes in batches of {batch} over {entries} entries, 3 nodes: \
         {:.1} µs of wall time per write",
        t.elapsed().as_secs_f64() * 1e6 / writes as f64
    );
}
