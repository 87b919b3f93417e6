//! The dev modes' TLS: a deployment CA and certificates signed by it,
//! kept under `<data dir>/tls/` (`cairnd dev` points clients at `ca.pem`,
//! `LDAPTLS_CACERT` for OpenLDAP's tools). Certificates are made again
//! (by the same CA) when the names they must carry change; the CA stays,
//! so clients that trust it go on trusting the node. Production
//! certificates come from `cairn certs init` or the operator's own CA,
//! named in the configuration.

use std::path::{Path, PathBuf};

use crate::Error;
use crate::ca::{Ca, ca_files, node_files, write_file};
use crate::identity::NodeName;

/// The files [`ensure`] and [`ensure_node`] keep.
#[derive(Debug, Clone)]
pub struct Files {
    /// The CA's certificate: what clients trust.
    pub ca: PathBuf,
    /// The certificate, then the CA's.
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
}

/// The name of the dev modes' CA.
pub const CA_NAME: &str = "Cairn deployment CA";

/// The dev CA in `dir`, made when it is missing. A directory from before
/// the CA's key was kept (a `ca.pem` alone) gets a new CA.
fn dev_ca(dir: &Path) -> Result<Ca, Error> {
    let (cert, key) = ca_files(dir);
    if cert.exists() && !key.exists() {
        let _ = std::fs::remove_file(&cert);
    }
    Ok(Ca::open_or_create(dir, CA_NAME)?.0)
}

/// `<stem>.pem` and `<stem>-key.pem` in `dir`, issued by the dev CA for
/// `names` (DNS names and IP addresses) and `node`, made again when they
/// were made for anything else.
fn ensure_pair(
    dir: &Path,
    (cert, key): (PathBuf, PathBuf),
    names: &[String],
    node: Option<&NodeName>,
) -> Result<Files, Error> {
    let (ca_cert, _) = ca_files(dir);
    let record = cert.with_extension("names");
    let files = Files {
        ca: ca_cert,
        cert,
        key,
    };
    let mut wanted = names.join("\n") + "\n";
    if let Some(n) = node {
        wanted.push_str(&n.uri());
        wanted.push('\n');
    }
    let ca = dev_ca(dir)?;
    let made_for = std::fs::read_to_string(&record).ok();
    let issued_by_this_ca =
        std::fs::read_to_string(&files.cert).is_ok_and(|pem| pem.ends_with(ca.cert_pem()));
    if files.key.exists() && issued_by_this_ca && made_for.as_deref() == Some(wanted.as_str()) {
        return Ok(files);
    }
    ca.issue(names, node)?.write(&files.cert, &files.key)?;
    write_file(&record, &wanted, false)?;
    Ok(files)
}

/// The dev CA and a server certificate for `names` in `dir`
/// (`server.pem`, `server-key.pem`), made first where missing or made for
/// other names.
pub fn ensure(dir: &Path, names: &[String]) -> Result<Files, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.to_path_buf(),
        why: e.to_string(),
    })?;
    let files = (dir.join("server.pem"), dir.join("server-key.pem"));
    ensure_pair(dir, files, names, None)
}

/// The dev CA and node `node`'s certificate in `dir` (`<site>-<id>.pem`),
/// for `names` and carrying the node's URI, so it serves LDAPS and the
/// hosts' port and proves the node on the peer listener.
pub fn ensure_node(dir: &Path, names: &[String], node: &NodeName) -> Result<Files, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.to_path_buf(),
        why: e.to_string(),
    })?;
    ensure_pair(dir, node_files(dir, node), names, Some(node))
}
