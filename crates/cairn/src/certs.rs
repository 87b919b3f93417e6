//! `cairn certs init`: a deployment CA and a certificate per node, for a
//! lab or a first deployment (production may use its own CA, as long as
//! each node's certificate carries its node URI; `docs/security.md`).
//!
//! `cairn certs init --out DIR --node east/1=10.1.0.11,n1.example.com …`
//! keeps the CA in `DIR/ca.pem` and `DIR/ca-key.pem` (made on the first
//! run, used as it is afterwards, so a later run adds nodes) and writes
//! each node's certificate and key to `DIR/<site>-<id>.pem` and
//! `DIR/<site>-<id>-key.pem`. A node whose files exist is left alone
//! unless `--renew` is given. The certificate names the node (for mutual
//! TLS between nodes) and the DNS names and addresses given after `=`
//! (what LDAP and gRPC clients connect to).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_tls::NodeName;
use cairn_tls::ca::{Ca, node_files};

#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// Make the deployment CA (unless DIR has one) and a certificate for
    /// every --node.
    Init(InitArgs),
    /// Make a client certificate, with the CA in DIR, naming a directory
    /// entry: a person or tool binds with it by SASL EXTERNAL over LDAPS
    /// or StartTLS, a host proves with it which host it is on the hosts'
    /// port (nodes need `[tls] client_ca_file`).
    Client(ClientArgs),
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Where the CA is kept (made by `cairn certs init`).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The entry the certificate names, e.g.
    /// `cn=bob,ou=people,dc=example,dc=com`.
    #[arg(long, value_name = "DN")]
    pub dn: String,
    /// The files' name: DIR/NAME.pem and DIR/NAME-key.pem (default: the
    /// first RDN's value).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where the CA and the certificates are kept.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A node: SITE/ID, then after `=` the DNS names and IP addresses its
    /// clients reach it by, comma-separated (e.g.
    /// `east/1=10.1.0.11,ldap1.example.com`). Repeat for every node.
    #[arg(long = "node", value_name = "SITE/ID[=NAMES]", required = true)]
    pub nodes: Vec<String>,
    /// Make the certificates of nodes that already have files again
    /// (with the same CA).
    #[arg(long)]
    pub renew: bool,
}

/// One `--node` argument.
#[derive(Debug, PartialEq, Eq)]
struct NodeArg {
    node: NodeName,
    names: Vec<String>,
}

fn parse_node(arg: &str) -> anyhow::Result<NodeArg> {
    let (who, names) = arg.split_once('=').unwrap_or((arg, ""));
    let (site, id) = who
        .rsplit_once('/')
        .with_context(|| format!("--node {arg:?}: expected SITE/ID[=NAMES]"))?;
    if site.trim().is_empty() {
        anyhow::bail!("--node {arg:?}: the site is empty");
    }
    let id: u64 = id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .with_context(|| format!("--node {arg:?}: the node id must be a positive number"))?;
    let names: Vec<String> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    Ok(NodeArg {
        node: NodeName::new(site.trim(), id),
        names,
    })
}

pub fn run(cmd: CertsCmd) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        CertsCmd::Init(args) => args,
        CertsCmd::Client(args) => return client(args),
    };
    let nodes = args
        .nodes
        .iter()
        .map(|a| parse_node(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, a) in nodes.iter().enumerate() {
        if nodes[..i]
            .iter()
            .any(|b| b.node.node == a.node.node && b.node.in_site(&a.node.site))
        {
            anyhow::bail!("--node: {} is given twice", a.node);
        }
    }
    let (ca, made) = Ca::open_or_create(&args.out, "Cairn deployment CA")?;
    let (ca_cert, ca_key) = cairn_tls::ca::ca_files(&args.out);
    if made {
        println!("made the deployment CA: {}", ca_cert.display());
        println!(
            "  its key {} signs certificates for any node: keep it off the nodes",
            ca_key.display()
        );
    } else {
        println!("using the deployment CA in {}", ca_cert.display());
    }
    for a in &nodes {
        let (cert, key) = node_files(&args.out, &a.node);
        if cert.exists() && key.exists() && !args.renew {
            println!(
                "{}: kept {} (--renew makes it again)",
                a.node,
                cert.display()
            );
            continue;
        }
        ca.issue(&a.names, Some(&a.node))?.write(&cert, &key)?;
        println!(
            "{}: {} for {}",
            a.node,
            cert.display(),
            if a.names.is_empty() {
                "no client-facing names".to_string()
            } else {
                a.names.join(", ")
            }
        );
    }
    println!("\nin each node's configuration (its own files):");
    if let Some(a) = nodes.first() {
        let (cert, key) = node_files(&args.out, &a.node);
        println!(
            "  [tls]\n  ca_file = \"{}\"\n  cert_file = \"{}\"\n  key_file = \"{}\"",
            ca_cert.display(),
            cert.display(),
            key.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn certs client`.
fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let dn = cairn_core::dn::Dn::parse(&args.dn)
        .with_context(|| format!("--dn {:?} is not a DN", args.dn))?;
    if dn.is_root() {
        anyhow::bail!("--dn: the certificate must name an entry");
    }
    let (ca_cert, ca_key) = cairn_tls::ca::ca_files(&args.out);
    if !ca_cert.exists() {
        anyhow::bail!(
            "no CA in {}: make it with `cairn certs init --out {} --node …` first",
            args.out.display(),
            args.out.display()
        );
    }
    let ca = Ca::load(&ca_cert, &ca_key)?;
    let stem = match args.name {
        Some(n) => n,
        None => dn
            .rdn()
            .and_then(|r| r.avas().first())
            .map(|a| a.value.clone())
            .unwrap_or_default(),
    };
    if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
        anyhow::bail!("--name {stem:?}: not a file name; give --name");
    }
    let cert = args.out.join(format!("{stem}.pem"));
    let key = args.out.join(format!("{stem}-key.pem"));
    ca.issue_client(&dn.to_string())?.write(&cert, &key)?;
    println!(
        "{dn}: {} and {} (a client certificate: SASL EXTERNAL over LDAPS or StartTLS, or a host's proof on the hosts' port)",
        cert.display(),
        key.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_arguments_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_node("east/1=10.1.0.11, n1.example.com").unwrap(),
            NodeArg {
                node: NodeName::new("east", 1),
                names: vec!["10.1.0.11".into(), "n1.example.com".into()],
            }
        );
        assert_eq!(parse_node("a/b/3").unwrap().node, NodeName::new("a/b", 3));
        assert!(parse_node("east/1").unwrap().names.is_empty());
        for bad in ["east", "east/", "/1", "east/0", "east/x=n"] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }
}
