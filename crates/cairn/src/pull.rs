//! `cairn pull`: what a stateless host runs at boot. Find the directory
//! (DNS SRV `_cairn._tcp.<domain>`, or `--server`), ask the first node that
//! answers which nodes are closest (`Locate`), pull the effective
//! configuration from the closest node that answers (falling back down the
//! list), write it atomically, and with `--watch` keep it current.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_proto::pb;
use cairn_proto::pb::config_client::ConfigClient;
use cairn_proto::pb::locator_client::LocatorClient;
use clap::{Args, ValueEnum};
use tonic::transport::{Channel, Endpoint};

/// How long to wait for one node before trying the next.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// `key=value` lines, each followed by the entry it came from.
    Text,
    /// One JSON object: host, site, cluster, image, settings with sources.
    Json,
    /// Shell `KEY=value` assignments (dots become underscores, upper case).
    Env,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// SMBIOS UUID of this host.
    #[arg(long)]
    guid: Option<String>,
    /// MAC address (repeat for several).
    #[arg(long)]
    mac: Vec<String>,
    #[arg(long)]
    serial: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Hardware vendor and model, for deploy rules (unknown hosts).
    #[arg(long)]
    vendor: Option<String>,
    #[arg(long)]
    model: Option<String>,
    /// This host's IP address (repeat for several), for deploy rules.
    #[arg(long)]
    ip: Vec<String>,
    /// DNS domain whose `_cairn._tcp` SRV record lists the nodes.
    #[arg(long, default_value = "example.com")]
    domain: String,
    /// DNS server to ask (host:port).
    #[arg(long, default_value = "127.0.0.1:8600")]
    dns: SocketAddr,
    /// gRPC address of a node (repeat for several); skips DNS.
    #[arg(long)]
    server: Vec<String>,
    /// Write the configuration to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Keep running and rewrite the configuration whenever it changes.
    #[arg(long)]
    watch: bool,
    /// Read the enrollment token from FILE (`cairn token create` makes
    /// one); or set CAIRN_TOKEN. Never printed or logged.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Prove which host this is with a client certificate (PEM; `cairn
    /// certs client --dn <host DN>` makes one) and its key (--key), over
    /// TLS (`cairn --ca FILE`): the node then answers for that host
    /// alone, with or without a token. Or CAIRN_CERT and CAIRN_KEY.
    #[arg(long, value_name = "FILE", env = "CAIRN_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "CAIRN_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

/// The enrollment token of this run, set once at its start.
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The token from `--token-file` or CAIRN_TOKEN.
fn read_token(a: &PullArgs) -> anyhow::Result<Option<String>> {
    let text = match &a.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the token file {}", p.display()))?,
        ),
        None => std::env::var("CAIRN_TOKEN").ok(),
    };
    Ok(text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

/// A Pull or Watch request carrying this run's token, if any.
fn request(
    identity: &pb::Identity,
    version: &str,
) -> anyhow::Result<tonic::Request<pb::PullRequest>> {
    let mut r = tonic::Request::new(pb::PullRequest {
        identity: Some(identity.clone()),
        version: version.to_string(),
    });
    if let Some(Some(t)) = TOKEN.get() {
        // The error must not quote the token.
        let v = format!("Bearer {t}").parse().map_err(|_| {
            anyhow::anyhow!("the enrollment token holds characters metadata cannot carry")
        })?;
        r.metadata_mut().insert("authorization", v);
    }
    Ok(r)
}

/// The TLS settings of every connection to a node (`cairn --ca FILE`:
/// TLS, trusting that CA), set once at
/// the start of a run.
static TLS: std::sync::OnceLock<Option<tonic::transport::ClientTlsConfig>> =
    std::sync::OnceLock::new();

pub async fn run(a: PullArgs, ca: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let identity = pb::Identity {
        uuid: a.guid.clone().unwrap_or_default(),
        macs: a.mac.clone(),
        serial: a.serial.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
        vendor: a.vendor.clone().unwrap_or_default(),
        model: a.model.clone().unwrap_or_default(),
        ips: a.ip.clone(),
    };
    if identity.uuid.is_empty()
        && identity.macs.is_empty()
        && identity.serial.is_empty()
        && identity.hostname.is_empty()
    {
        bail!("give at least one of --guid, --mac, --serial, --hostname");
    }
    let tls = match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem));
            if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
                };
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            Some(tls)
        }
        None if a.cert.is_some() => {
            bail!("--cert needs TLS: give the node's CA with `cairn --ca FILE pull …`")
        }
        None => None,
    };
    let _ = TLS.set(tls);
    let _ = TOKEN.set(read_token(&a)?);
    // The first answer is a Pull: it registers a host a deploy rule
    // places. Watching never registers (a host deleted while watched
    // stays deleted).
    let nodes = closest_nodes(&a).await?;
    let (mut node, resp) = pull_first(&nodes, &identity).await?;
    emit(&a, &resp)?;
    let mut version = resp.version.clone();
    if !a.watch {
        return Ok(ExitCode::SUCCESS);
    }
    let mut pause = Duration::from_secs(1);
    let mut attempt = 0usize;
    loop {
        // When the stream ends (node down, network, a conflict in the
        // host's entry), keep the configuration written, locate again
        // and resume from the version held, pausing longer each time.
        let mut code = None;
        let (held, why) = match watch(&node, &identity, &version, &a).await {
            Ok(v) => (v, "the stream ended".to_string()),
            Err((v, e)) => {
                code = e.downcast_ref::<tonic::Status>().map(tonic::Status::code);
                if matches!(
                    code,
                    Some(
                        tonic::Code::NotFound
                            | tonic::Code::InvalidArgument
                            | tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                    )
                ) {
                    // Deleted, or no longer this caller's to read: the
                    // watch is over; what was written stays.
                    eprintln!("cairn pull: the watch on {node} ended: {e:#}");
                    return Ok(ExitCode::FAILURE);
                }
                (v, format!("{e:#}"))
            }
        };
        if held != version {
            // It got something: the next loss starts from a short pause.
            pause = Duration::from_secs(1);
            version = held;
        }
        eprintln!(
            "cairn pull: lost the watch on {node} ({why}); watching again in {} s, \
             keeping the configuration written",
            pause.as_secs()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_WATCH_PAUSE);
        attempt += 1;
        // A node that answered (a conflict in the host's entry) is asked
        // again; one that did not, the next of the closest.
        let answered = code == Some(tonic::Code::FailedPrecondition);
        match closest_nodes(&a).await {
            Ok(nodes) if answered => node = nodes[0].clone(),
            Ok(nodes) => node = nodes[attempt % nodes.len()].clone(),
            Err(e) => eprintln!("cairn pull: {e:#}"),
        }
    }
}

/// The longest pause between attempts to watch again.
const MAX_WATCH_PAUSE: Duration = Duration::from_secs(30);

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let tls = TLS.get().cloned().flatten();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS settings for {addr}"))?;
    }
    endpoint
        .connect_timeout(NODE_TIMEOUT)
        .timeout(NODE_TIMEOUT)
        // A node that vanished (powered off, cut off) ends a Watch within
        // a minute instead of leaving the host waiting for ever.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// Where to start: `--server`, else the SRV record.
async fn seeds(a: &PullArgs) -> anyhow::Result<Vec<String>> {
    if !a.server.is_empty() {
        return Ok(a.server.clone());
    }
    let name = format!("_cairn._tcp.{}", a.domain.trim_end_matches('.'));
    let targets = cairn_proto::dns::lookup_srv(a.dns, &name, NODE_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve SRV {name} at {}: {e}", a.dns))?;
    let mut out = vec![];
    for t in targets {
        match t.addrs.first() {
            Some(ip) => out.push(SocketAddr::new(*ip, t.port).to_string()),
            None => out.push(format!("{}:{}", t.target.trim_end_matches('.'), t.port)),
        }
    }
    if out.is_empty() {
        bail!("SRV {name} at {} lists no nodes", a.dns);
    }
    Ok(out)
}

/// The nodes to pull from, closest first: what the first seed that
/// answers `Locate` says, then the seeds themselves as a last resort.
async fn closest_nodes(a: &PullArgs) -> anyhow::Result<Vec<String>> {
    let seeds = seeds(a).await?;
    let mut errors = vec![];
    for s in &seeds {
        let located = async {
            let mut l = LocatorClient::new(connect(s).await?);
            let r = l
                .locate(pb::LocateRequest::default())
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            anyhow::Ok(r.into_inner())
        }
        .await;
        match located {
            Ok(r) => {
                let mut nodes: Vec<String> = r
                    .nodes
                    .iter()
                    .filter(|n| !n.grpc_address.is_empty())
                    .map(|n| n.grpc_address.clone())
                    .collect();
                for s in &seeds {
                    if !nodes.contains(s) {
                        nodes.push(s.clone());
                    }
                }
                return Ok(nodes);
            }
            Err(e) => errors.push(format!("{s}: {e:#}")),
        }
    }
    bail!("no Cairn node answered Locate:\n  {}", errors.join("\n  "))
}

/// Pulls from the first node that answers. A host the directory does not
/// know (or a malformed identity) is an answer, not a reason to try the
/// next node.
async fn pull_first(
    nodes: &[String],
    identity: &pb::Identity,
) -> anyhow::Result<(String, pb::PullResponse)> {
    let mut errors = vec![];
    for n in nodes {
        let pulled = async {
            let mut c = ConfigClient::new(connect(n).await?);
            c.pull(request(identity, "")?)
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        match pulled {
            Ok(r) => return Ok((n.clone(), r.into_inner())),
            Err(e) => match e.downcast_ref::<tonic::Status>() {
                Some(s)
                    if matches!(
                        s.code(),
                        tonic::Code::NotFound
                            | tonic::Code::InvalidArgument
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::Unauthenticated
                    ) =>
                {
                    bail!("{n}: {}", s.message())
                }
                _ => errors.push(format!("{n}: {e:#}")),
            },
        }
    }
    bail!("no Cairn node answered Pull:\n  {}", errors.join("\n  "))
}

/// Follows the node's Watch stream, writing each new configuration.
/// Returns the last version written when the stream ends.
async fn watch(
    node: &str,
    identity: &pb::Identity,
    version: &str,
    a: &PullArgs,
) -> Result<String, (String, anyhow::Error)> {
    let mut held = version.to_string();
    let ch = connect(node).await.map_err(|e| (held.clone(), e))?;
    // No per-request timeout on the stream itself.
    let mut c = ConfigClient::new(ch);
    let req = request(identity, &held).map_err(|e| (held.clone(), e))?;
    let mut stream = c
        .watch(req)
        .await
        .map_err(|e| (held.clone(), e.into()))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.version != held {
                    emit(a, &resp).map_err(|e| (held.clone(), e))?;
                    held = resp.version.clone();
                }
            }
            Ok(None) => return Ok(held),
            Err(e) => return Err((held, e.into())),
        }
    }
}

fn emit(a: &PullArgs, r: &pb::PullResponse) -> anyhow::Result<()> {
    let text = render(a.format, r);
    match &a.out {
        Some(path) => crate::export::write_atomically(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display())),
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
    }
}

fn render(format: Format, r: &pb::PullResponse) -> String {
    let image = r.image.clone().unwrap_or_default();
    match format {
        Format::Text => {
            let mut s = format!(
                "# host {}\n# site {}\n# cluster {}\n# version {}\n",
                r.host_dn, r.site, r.cluster_dn, r.version
            );
            if !r.registered_by_rule.is_empty() {
                s += &format!("# registered by {}\n", r.registered_by_rule);
            }
            for st in &r.settings {
                let how = if st.enforced { "enforced from" } else { "from" };
                let note = if st.secret && st.value.is_empty() {
                    ", secret: withheld without TLS (cairn --ca FILE pull)"
                } else if st.secret {
                    ", secret"
                } else {
                    ""
                };
                s += &format!("{}={}\t# {how} {}{note}\n", st.key, st.value, st.source);
            }
            s
        }
        Format::Env => {
            let mut s = String::new();
            let mut put = |k: &str, v: &str| {
                s += &format!("{}={}\n", env_key(k), shell_quote(v));
            };
            put("cairn.host", &r.host_dn);
            put("cairn.site", &r.site);
            put("cairn.cluster", &r.cluster_dn);
            put("cairn.version", &r.version);
            put("cairn.image.kernel", &image.kernel);
            put("cairn.image.append", &image.append);
            for st in &r.settings {
                put(&st.key, &st.value);
            }
            s
        }
        Format::Json => {
            let settings: Vec<String> = r
                .settings
                .iter()
                .map(|st| {
                    format!(
                        "{}:{{\"value\":{},\"source\":{},\"enforced\":{},\"secret\":{}}}",
                        json(&st.key),
                        json(&st.value),
                        json(&st.source),
                        st.enforced,
                        st.secret
                    )
                })
                .collect();
            let modules: Vec<String> = image.modules.iter().map(|m| json(m)).collect();
            format!(
                "{{\"version\":{},\"host\":{},\"site\":{},\"cluster\":{},\"boot_image\":{},\
                 \"image\":{{\"dn\":{},\"kernel\":{},\"modules\":[{}],\"append\":{}}},\
                 \"registered_by_rule\":{},\"settings\":{{{}}}}}\n",
                json(&r.version),
                json(&r.host_dn),
                json(&r.site),
                json(&r.cluster_dn),
                json(&r.boot_image),
                json(&image.dn),
                json(&image.kernel),
                modules.join(","),
                json(&image.append),
                json(&r.registered_by_rule),
                settings.join(",")
            )
        }
    }
}

fn env_key(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// A JSON string literal.
fn json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::PullResponse {
        pb::PullResponse {
            version: "00ff".into(),
            host_dn: "cn=h,dc=example,dc=com".into(),
            settings: vec![pb::Setting {
                key: "motd.text".into(),
                value: "it's \"quoted\"\n".into(),
                source: "cn=a,dc=example,dc=com".into(),
                enforced: true,
                secret: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn env_output_is_safe_to_source() {
        let s = render(Format::Env, &sample());
        assert!(s.contains("MOTD_TEXT='it'\\''s \"quoted\"\n'\n"), "{s}");
        assert!(s.contains("CAIRN_HOST='cn=h,dc=example,dc=com'"), "{s}");
    }

    #[test]
    fn json_output_escapes_values() {
        let s = render(Format::Json, &sample());
        assert!(
            s.contains(r#""motd.text":{"value":"it's \"quoted\"\n","source":"cn=a,dc=example,dc=com","enforced":true,"secret":false}"#),
            "{s}"
        );
    }

    #[test]
    fn text_output_names_sources() {
        let s = render(Format::Text, &sample());
        assert!(
            s.contains("\t# enforced from cn=a,dc=example,dc=com"),
            "{s}"
        );
    }
}
