//! `cairn dhcp snippet`: the options the operator's DHCP server needs to
//! network-boot a site's hosts from its nodes (issue 13, `docs/boot.md`),
//! for dnsmasq, ISC dhcpd or Kea.
//!
//! Firmware PXE (no iPXE yet) gets an iPXE binary over TFTP by its client
//! architecture (option 93: BIOS, x86-64 UEFI, ARM64 UEFI), with the node
//! as next-server (siaddr) and option 66; iPXE (user class "iPXE", or
//! option 175) gets the node's boot script URL over HTTP in the file
//! field / option 67. iPXE ignores option 66: siaddr and the file name
//! are what it uses.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use ldap3::{Scope, SearchEntry};

use crate::client::{Auth, connect, naming_context};

#[derive(Debug, Subcommand)]
pub enum DhcpCmd {
    /// Print the DHCP options that network-boot a site's hosts from its
    /// nodes (the first node serving TFTP and HTTP; the others are listed
    /// in a comment).
    Snippet(SnippetArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// dnsmasq options (`conf-file=` or `/etc/dnsmasq.d/`).
    Dnsmasq,
    /// ISC dhcpd statements (a subnet or global scope).
    Isc,
    /// Kea `client-classes` (merge into `Dhcp4`).
    Kea,
}

#[derive(Debug, Args)]
pub struct SnippetArgs {
    #[arg(long, value_enum)]
    format: Format,
    /// The site whose nodes serve the boot (default: the site of the node
    /// --url names).
    #[arg(long)]
    site: Option<String>,
    /// The iPXE binary for BIOS firmware (Debian's `ipxe` package:
    /// /usr/lib/ipxe/undionly.kpxe), in the image root.
    #[arg(long, default_value = "undionly.kpxe")]
    bios: String,
    /// The iPXE binary for x86-64 UEFI firmware (/usr/lib/ipxe/ipxe.efi).
    #[arg(long, default_value = "ipxe.efi")]
    efi: String,
    /// The iPXE binary for ARM64 UEFI firmware.
    #[arg(long, default_value = "ipxe-arm64.efi")]
    arm64: String,
}

/// A node that serves the boot, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNode {
    pub id: u64,
    /// host:port
    pub http: Option<String>,
    pub tftp: Option<String>,
}

/// What the snippet is made of.
pub struct Plan<'a> {
    pub site: &'a str,
    /// The node hosts get the boot from.
    pub server: String,
    /// `http://host:port/boot.ipxe`
    pub script: String,
    /// The other nodes, for the comment.
    pub others: Vec<String>,
    /// Warnings for the operator (on standard error).
    pub warnings: Vec<String>,
}

/// The host of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(addr)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Which node serves, and from where: the lowest id with both TFTP and
/// HTTP published.
pub fn plan<'a>(site: &'a str, nodes: &[BootNode]) -> anyhow::Result<Plan<'a>> {
    let mut nodes = nodes.to_vec();
    nodes.sort_by_key(|n| n.id);
    let usable: Vec<&BootNode> = nodes
        .iter()
        .filter(|n| n.http.is_some() && n.tftp.is_some())
        .collect();
    let Some(first) = usable.first() else {
        bail!(
            "no node of site {site} publishes both a TFTP and an HTTP address \
             (set [boot] tftp_listen, and give the nodes time to publish)"
        );
    };
    let (http, tftp) = (
        first.http.clone().unwrap_or_default(),
        first.tftp.clone().unwrap_or_default(),
    );
    let server = host_of(&tftp).to_string();
    let mut warnings = vec![];
    if server.parse::<std::net::Ipv4Addr>().is_err() {
        warnings.push(format!(
            "node {}'s TFTP address {tftp} is not an IPv4 address; DHCPv4's next-server needs one",
            first.id
        ));
    }
    if !tftp.ends_with(":69") {
        warnings.push(format!(
            "node {}'s TFTP listens on {tftp}: PXE firmware asks port 69 only",
            first.id
        ));
    }
    Ok(Plan {
        site,
        server,
        script: format!("http://{http}/boot.ipxe"),
        others: usable[1..]
            .iter()
            .map(|n| {
                format!(
                    "node {} (TFTP {}, HTTP {})",
                    n.id,
                    n.tftp.as_deref().unwrap_or("-"),
                    n.http.as_deref().unwrap_or("-")
                )
            })
            .collect(),
        warnings,
    })
}

/// The snippet in `format`.
pub fn render(format: Format, p: &Plan, a: &SnippetArgs) -> String {
    let mut head = format!(
        "Cairn network boot for site {}: `cairn dhcp snippet --format {}`.\n\
         Firmware PXE gets iPXE over TFTP from {s} (next-server, option 66),\n\
         chosen by its architecture (option 93); iPXE gets Cairn's boot script,\n\
         {script} (file, option 67). iPXE ignores option 66.\n",
        p.site,
        match format {
            Format::Dnsmasq => "dnsmasq",
            Format::Isc => "isc",
            Format::Kea => "kea",
        },
        s = p.server,
        script = p.script,
    );
    if !p.others.is_empty() {
        head.push_str("The site's other nodes serve the same boot:\n");
        for o in &p.others {
            head.push_str(&format!("  {o}\n"));
        }
    }
    let comment = |prefix: &str| -> String {
        head.lines()
            .map(|l| format!("{prefix} {l}").trim_end().to_string() + "\n")
            .collect()
    };
    let s = &p.server;
    match format {
        Format::Dnsmasq => format!(
            "{}\
             dhcp-match=set:ipxe,175\n\
             dhcp-userclass=set:ipxe,iPXE\n\
             dhcp-match=set:efi64,option:client-arch,7\n\
             dhcp-match=set:efi64,option:client-arch,9\n\
             dhcp-match=set:arm64,option:client-arch,11\n\
             dhcp-boot=tag:ipxe,{script}\n\
             dhcp-boot=tag:!ipxe,tag:efi64,{efi},,{s}\n\
             dhcp-boot=tag:!ipxe,tag:arm64,{arm64},,{s}\n\
             dhcp-boot=tag:!ipxe,tag:!efi64,tag:!arm64,{bios},,{s}\n\
             dhcp-option=tag:!ipxe,option:tftp-server,{s}\n",
            comment("#"),
            script = p.script,
            efi = a.efi,
            arm64 = a.arm64,
            bios = a.bios,
        ),
        Format::Isc => format!(
            "{}\
             option client-arch code 93 = unsigned integer 16;\n\
             next-server {s};\n\
             option tftp-server-name \"{s}\";\n\
             if exists user-class and option user-class = \"iPXE\" {{\n\
             \x20   filename \"{script}\";\n\
             }} elsif option client-arch = 7 or option client-arch = 9 {{\n\
             \x20   filename \"{efi}\";\n\
             }} elsif option client-arch = 11 {{\n\
             \x20   filename \"{arm64}\";\n\
             }} else {{\n\
             \x20   filename \"{bios}\";\n\
             }}\n",
            comment("#"),
            script = p.script,
            efi = a.efi,
            arm64 = a.arm64,
            bios = a.bios,
        ),
        Format::Kea => {
            let class = |name: &str, test: &str, file: &str, tftp: bool| {
                let mut c = format!(
                    "      {{\n        \"name\": {},\n        \"test\": {},\n        \"boot-file-name\": {}",
                    json(name),
                    json(test),
                    json(file)
                );
                if tftp {
                    c.push_str(&format!(
                        ",\n        \"next-server\": {},\n        \"option-data\": [ {{ \"name\": \"tftp-server-name\", \"data\": {} }} ]",
                        json(s),
                        json(s)
                    ));
                }
                c.push_str("\n      }");
                c
            };
            let classes = [
                class("cairn-ipxe", "option[77].text == 'iPXE'", &p.script, false),
                class(
                    "cairn-efi64",
                    "not member('cairn-ipxe') and (option[93].hex == 0x0007 or option[93].hex == 0x0009)",
                    &a.efi,
                    true,
                ),
                class(
                    "cairn-arm64",
                    "not member('cairn-ipxe') and option[93].hex == 0x000b",
                    &a.arm64,
                    true,
                ),
                class(
                    "cairn-bios",
                    "not member('cairn-ipxe') and not member('cairn-efi64') and not member('cairn-arm64')",
                    &a.bios,
                    true,
                ),
            ];
            format!(
                "{}{{\n  \"Dhcp4\": {{\n    \"client-classes\": [\n{}\n    ]\n  }}\n}}\n",
                comment("//"),
                classes.join(",\n")
            )
        }
    }
}

/// A JSON string.
fn json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub async fn run(cmd: DhcpCmd, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let DhcpCmd::Snippet(a) = cmd;
    let site = match &a.site {
        Some(s) => s.clone(),
        None => {
            let attrs = crate::subnets::status_of(url, auth).await?;
            crate::subnets::values(&attrs, "cairnSiteName")
                .into_iter()
                .next()
                .context("the node does not say which site it is in: give --site")?
        }
    };
    let mut ldap = connect(url, auth).await?;
    let base = naming_context(&mut ldap).await?;
    let site_dn = format!("cn={site},ou=sites,{base}");
    let res = ldap
        .search(
            &site_dn,
            Scope::OneLevel,
            "(objectClass=cairnNode)",
            vec!["cairnNodeId", "cairnHttpAddress", "cairnTftpAddress"],
        )
        .await?;
    if res.1.rc == 32 {
        bail!("no site is named {site:?} ({site_dn} does not exist)");
    }
    let (found, _) = res.success().context("cannot read the site's nodes")?;
    let one = |e: &SearchEntry, k: &str| e.attrs.get(k).and_then(|v| v.first()).cloned();
    let nodes: Vec<BootNode> = found
        .into_iter()
        .map(SearchEntry::construct)
        .map(|e| BootNode {
            id: one(&e, "cairnNodeId")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX),
            http: one(&e, "cairnHttpAddress"),
            tftp: one(&e, "cairnTftpAddress"),
        })
        .collect();
    let _ = ldap.unbind().await;
    let p = plan(&site, &nodes)?;
    for w in &p.warnings {
        eprintln!("cairn: warning: {w}");
    }
    print!("{}", render(a.format, &p, &a));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SnippetArgs {
        SnippetArgs {
            format: Format::Dnsmasq,
            site: None,
            bios: "undionly.kpxe".into(),
            efi: "ipxe.efi".into(),
            arm64: "ipxe-arm64.efi".into(),
        }
    }

    fn nodes() -> Vec<BootNode> {
        vec![
            BootNode {
                id: 2,
                http: Some("10.1.0.12:8080".into()),
                tftp: Some("10.1.0.12:69".into()),
            },
            BootNode {
                id: 1,
                http: Some("10.1.0.11:8080".into()),
                tftp: Some("10.1.0.11:69".into()),
            },
            BootNode {
                id: 3,
                http: Some("10.1.0.13:8080".into()),
                tftp: None,
            },
        ]
    }

    #[test]
    fn the_first_node_serving_both_is_the_server() {
        let p = plan("east", &nodes()).unwrap();
        assert_eq!(p.server, "10.1.0.11");
        assert_eq!(p.script, "http://10.1.0.11:8080/boot.ipxe");
        assert_eq!(
            p.others,
            ["node 2 (TFTP 10.1.0.12:69, HTTP 10.1.0.12:8080)"]
        );
        assert!(p.warnings.is_empty());
        let dev = [BootNode {
            id: 1,
            http: Some("127.0.0.1:8080".into()),
            tftp: Some("127.0.0.1:6969".into()),
        }];
        let p = plan("east", &dev).unwrap();
        assert!(p.warnings[0].contains("port 69 only"), "{:?}", p.warnings);
        assert!(plan("east", &nodes()[2..]).is_err());
    }

    #[test]
    fn dnsmasq_gets_ipxe_by_architecture_and_the_script_for_ipxe() {
        let p = plan("east", &nodes()).unwrap();
        let out = render(Format::Dnsmasq, &p, &args());
        for want in [
            "dhcp-userclass=set:ipxe,iPXE\n",
            "dhcp-boot=tag:ipxe,http://10.1.0.11:8080/boot.ipxe\n",
            "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,10.1.0.11\n",
            "dhcp-boot=tag:!ipxe,tag:!efi64,tag:!arm64,undionly.kpxe,,10.1.0.11\n",
            "dhcp-option=tag:!ipxe,option:tftp-server,10.1.0.11\n",
            "#   node 2 (TFTP 10.1.0.12:69",
        ] {
            assert!(out.contains(want), "{want:?} not in\n{out}");
        }
        // No server name in dhcp-boot: dnsmasq would send it as a second
        // option 66.
        assert!(
            !out.contains("dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,10"),
            "{out}"
        );
    }

    #[test]
    fn isc_and_kea_say_the_same() {
        let p = plan("east", &nodes()).unwrap();
        let isc = render(Format::Isc, &p, &args());
        for want in [
            "option client-arch code 93 = unsigned integer 16;\n",
            "next-server 10.1.0.11;\n",
            "option tftp-server-name \"10.1.0.11\";\n",
            "if exists user-class and option user-class = \"iPXE\" {\n    filename \"http://10.1.0.11:8080/boot.ipxe\";\n",
            "} elsif option client-arch = 7 or option client-arch = 9 {\n    filename \"ipxe.efi\";\n",
            "} else {\n    filename \"undionly.kpxe\";\n}\n",
        ] {
            assert!(isc.contains(want), "{want:?} not in\n{isc}");
        }
        let kea = render(Format::Kea, &p, &args());
        for want in [
            "\"test\": \"option[77].text == 'iPXE'\"",
            "\"boot-file-name\": \"http://10.1.0.11:8080/boot.ipxe\"",
            "\"next-server\": \"10.1.0.11\"",
            "\"boot-file-name\": \"undionly.kpxe\"",
        ] {
            assert!(kea.contains(want), "{want:?} not in\n{kea}");
        }
        // Balanced braces and brackets.
        let body: String = kea.lines().filter(|l| !l.starts_with("//")).collect();
        assert_eq!(body.matches('{').count(), body.matches('}').count());
        assert_eq!(body.matches('[').count(), body.matches(']').count());
    }
}
