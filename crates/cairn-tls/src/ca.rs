//! A deployment CA and the certificates it issues (rcgen): what `cairn
//! certs init` makes for a lab and what the dev modes make for
//! themselves. Production deployments may use their own CA instead, as
//! long as each node's certificate carries its node URI
//! ([`crate::identity`]).
//!
//! The CA's key is written next to its certificate, readable by its owner
//! only: whoever holds it can make a certificate for any node, so keep it
//! off the nodes (`docs/security.md`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;
use crate::identity::NodeName;

/// How long a CA made here is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
/// How long a node certificate made here is valid.
const CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86400);
/// How far back a new certificate's validity starts (clocks of the
/// deployment's machines a little behind the one that made it).
const BACKDATE: Duration = Duration::from_secs(86400);

fn gen_err(e: impl ToString) -> Error {
    Error::Generate(e.to_string())
}

fn io_err(path: &Path, e: impl ToString) -> Error {
    Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// A certificate (then its issuer's) and its private key, in PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pair {
    /// Writes the pair (the key first, readable by its owner only, so a
    /// certificate is never left without its key), each file replaced
    /// whole.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), Error> {
        write_file(key, &self.key_pem, true)?;
        write_file(cert, &self.cert_pem, false)
    }
}

/// Writes `text` to `path` through a temporary file and a rename, synced,
/// mode 0600 when `private`.
pub fn write_file(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).map_err(|e| io_err(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// A deployment's certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Where a node's certificate and key kept in a directory live:
/// `<site>-<id>.pem` and `<site>-<id>-key.pem` (characters of the site
/// other than letters, digits and `-` as `_`).
pub fn node_files(dir: &Path, node: &NodeName) -> (PathBuf, PathBuf) {
    let stem: String = format!("{}-{}", node.site, node.node)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    )
}

/// Where a CA kept in a directory lives.
pub fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

impl Ca {
    /// A new CA named `name`, valid for ten years from now.
    pub fn create(name: &str) -> Result<Ca, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in these files.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, Error> {
        let cert_pem = std::fs::read_to_string(cert).map_err(|e| io_err(cert, e))?;
        let key_pem = std::fs::read_to_string(key).map_err(|e| io_err(key, e))?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| io_err(key, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| io_err(cert, e))?;
        Ok(Ca { cert_pem, issuer })
    }

    /// The CA kept in `dir` (`ca.pem`, `ca-key.pem`), made there first if
    /// neither file exists; says whether it was made. One file without
    /// the other is an error, never replaced.
    pub fn open_or_create(dir: &Path, name: &str) -> Result<(Ca, bool), Error> {
        let (cert, key) = ca_files(dir);
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((Ca::load(&cert, &key)?, false)),
            (false, false) => {
                std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
                let ca = Ca::create(name)?;
                write_file(&key, &ca.issuer.key().serialize_pem(), true)?;
                write_file(&cert, &ca.cert_pem, false)?;
                Ok((ca, true))
            }
            (true, false) => Err(io_err(
                &key,
                "missing, but the CA certificate beside it exists (restore the key or remove both)",
            )),
            (false, true) => Err(io_err(
                &cert,
                "missing, but the CA key beside it exists (restore the certificate or remove both)",
            )),
        }
    }

    /// The CA's certificate, PEM: what clients and nodes trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for a server and client named `names` (DNS names and
    /// IP addresses) and, for a node, its node URI; valid for five years,
    /// for TLS servers and clients both.
    pub fn issue(&self, names: &[String], node: Option<&NodeName>) -> Result<Pair, Error> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
        if let Some(n) = node {
            params.subject_alt_names.push(SanType::URI(
                n.uri()
                    .try_into()
                    .map_err(|e| gen_err(format!("{n}: {e}")))?,
            ));
        }
        let mut dn = DistinguishedName::new();
        let cn = match (node, names.first()) {
            (Some(n), _) => format!("{}-{}", n.site, n.node),
            (None, Some(name)) => name.clone(),
            (None, None) => "cairn".into(),
        };
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        self.sign(
            params,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// Signs an end-entity certificate of `params` for `usages`, valid
    /// for five years, with a new key.
    fn sign(
        &self,
        mut params: CertificateParams,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Pair, Error> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CERT_VALIDITY).into();
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(Pair {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Ca {
    /// A client certificate for the directory entry `dn` (an LDAP DN
    /// string): an `ldap:///<DN>` URI names it
    /// ([`crate::identity::entry_of`]), its subject is `cn=` its first
    /// RDN's value; valid for five years, for TLS clients only.
    pub fn issue_client(&self, dn: &str) -> Result<Pair, Error> {
        let mut params = CertificateParams::default();
        let uri = crate::identity::entry_uri(dn);
        params.subject_alt_names = vec![SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|e| gen_err(format!("{uri}: {e}")))?,
        )];
        let cn = dn
            .split(',')
            .next()
            .and_then(|rdn| rdn.split_once('='))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| dn.to_string());
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, cn);
        params.distinguished_name = name;
        self.sign(params, vec![ExtendedKeyUsagePurpose::ClientAuth])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_ca_is_loaded_again_and_issues_node_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, made) = Ca::open_or_create(tmp.path(), "test CA").unwrap();
        assert!(made);
        let (again, made) = Ca::open_or_create(tmp.path(), "test CA").unwrap();
        assert!(!made);
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let node = NodeName::new("east", 2);
        let pair = again
            .issue(&["localhost".into(), "127.0.0.2".into()], Some(&node))
            .unwrap();
        let (c, k) = (tmp.path().join("n.pem"), tmp.path().join("n-key.pem"));
        pair.write(&c, &k).unwrap();
        let certs = crate::load_certs(&c).unwrap();
        assert_eq!(certs.len(), 2, "the node's certificate, then the CA's");
        assert_eq!(crate::identity::node_of(&certs[0]), Ok(node));
        assert_eq!(
            crate::identity::node_of(&certs[1]),
            Err(crate::identity::NotANode::None)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&k).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(tmp.path().join("ca-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn half_a_ca_is_refused_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        Ca::open_or_create(tmp.path(), "test CA").unwrap();
        let (_, key) = ca_files(tmp.path());
        std::fs::remove_file(&key).unwrap();
        let e = Ca::open_or_create(tmp.path(), "test CA")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("ca-key.pem"), "{e}");
        assert!(!key.exists(), "nothing was made in its place");
    }
}
