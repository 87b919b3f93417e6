//! TLS for Cairn's listeners: a server's certificate chain and key from PEM
//! files, read again when the files change (no restart to renew a
//! certificate), with rustls and its ring provider only (no OpenSSL, and
//! never two providers: `CRATES.md`); and a deployment CA with
//! certificates signed by it for a lab or the dev modes ([`dev`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub mod dev;

pub use rustls;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that cannot be read or holds no usable PEM.
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    /// rustls refused the certificate or key (a key that does not match
    /// the certificate, an unsupported algorithm).
    #[error("TLS: {0}")]
    Tls(String),
    /// Making a certificate failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn file_error(path: &Path, why: impl ToString) -> Error {
    Error::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// The ring provider, the only one Cairn builds with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain in a PEM file (the server's first, then its
/// issuers).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "no certificate (PEM CERTIFICATE) in the file",
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// A server configuration for the certificate chain and key in these
/// files, TLS 1.2 and 1.3, without client certificates, offering the
/// application protocols `alpn` (`h2` for gRPC; none for LDAP).
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, Error> {
    let certs = load_certs(cert)?;
    let key = load_key(key_path)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Tls(format!(
                "{} and {}: {e}",
                cert.display(),
                key_path.display()
            ))
        })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A client configuration that trusts only the CA certificate(s) in the
/// PEM file `ca` (a deployment's own CA, as `cairnd dev` makes).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| file_error(ca, e))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A server-side TLS handshake over `tcp` with the settings `tls` has now,
/// within `timeout` (a client that stalls it is dropped, not waited for).
pub async fn accept(
    tls: &Reloading,
    tcp: tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake did not finish in time",
            ))
        })
}

/// A server's TLS settings from a certificate file and a key file, read
/// again when either file changes: each new connection asks
/// [`Reloading::config`], which looks at the files' modification times
/// and, when they moved, loads them again. A pair that does not load (a
/// half-written renewal) keeps the previous settings and is reported by
/// [`Reloading::last_error`] until a good pair replaces it.
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    alpn: &'static [&'static [u8]],
    state: Mutex<State>,
}

/// gRPC's application protocol (HTTP/2), which gRPC clients require.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

struct State {
    config: Arc<ServerConfig>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    loads: u64,
    error: Option<String>,
    /// When a load last failed: the files are tried again a second later
    /// even if their times did not move (a renewal written within one
    /// tick of the clock after a half-written read).
    failed_at: Option<std::time::Instant>,
}

/// How soon a pair that did not load is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Reloading {
    /// Loads the pair now: a pair that does not load is an error here (a
    /// node does not start with TLS it cannot serve).
    pub fn new(cert: &Path, key: &Path) -> Result<Reloading, Error> {
        Self::with_alpn(cert, key, &[])
    }

    /// The same, offering the application protocols `alpn`
    /// ([`ALPN_GRPC`]).
    pub fn with_alpn(
        cert: &Path,
        key: &Path,
        alpn: &'static [&'static [u8]],
    ) -> Result<Reloading, Error> {
        let stamps = (modified(cert), modified(key));
        let config = server_config(cert, key, alpn)?;
        Ok(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            alpn,
            state: Mutex::new(State {
                config,
                stamps,
                loads: 1,
                error: None,
                failed_at: None,
            }),
        })
    }

    /// The settings for a new connection, read again first if the files
    /// changed since they were last read.
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = (modified(&self.cert), modified(&self.key));
        let retry = st.failed_at.is_some_and(|t| t.elapsed() >= RETRY);
        if stamps != st.stamps || retry {
            st.stamps = stamps;
            match server_config(&self.cert, &self.key, self.alpn) {
                Ok(c) => {
                    st.config = c;
                    st.loads += 1;
                    st.error = None;
                    st.failed_at = None;
                }
                Err(e) => {
                    st.error = Some(e.to_string());
                    st.failed_at = Some(std::time::Instant::now());
                }
            }
        }
        st.config.clone()
    }

    /// How many times the pair was loaded (1 at start).
    pub fn loads(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).loads
    }

    /// Why the files, as they are now, could not be loaded (the previous
    /// settings are still served).
    pub fn last_error(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .clone()
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_pair_is_loaded_again_and_a_bad_one_keeps_the_last_good() {
        let tmp = tempfile::tempdir().unwrap();
        let first = dev::ensure(tmp.path(), &["localhost".into()]).unwrap();
        let tls = Reloading::new(&first.cert, &first.key).unwrap();
        assert_eq!(tls.loads(), 1);
        let _ = tls.config();
        assert_eq!(tls.loads(), 1, "unchanged files are not read again");
        // A renewal: a new pair from another CA in place of the old one.
        let other = tempfile::tempdir().unwrap();
        let second = dev::ensure(other.path(), &["localhost".into()]).unwrap();
        // Modification times have a resolution; make sure they move.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::copy(&second.cert, &first.cert).unwrap();
        std::fs::copy(&second.key, &first.key).unwrap();
        let _ = tls.config();
        assert_eq!(tls.loads(), 2);
        assert_eq!(tls.last_error(), None);
        // A half-written renewal: the last good pair stays.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&first.key, "not a key").unwrap();
        let _ = tls.config();
        assert_eq!(tls.loads(), 2);
        assert!(tls.last_error().is_some(), "the bad key is reported");
        // Fixed within the same tick of the clock: tried again after the
        // retry interval even though the times may not have moved.
        std::fs::copy(&second.key, &first.key).unwrap();
        std::thread::sleep(RETRY + std::time::Duration::from_millis(50));
        let _ = tls.config();
        assert_eq!(tls.loads(), 3);
        assert_eq!(tls.last_error(), None);
    }

    #[test]
    fn files_without_pem_are_refused_with_their_name() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("empty.pem");
        std::fs::write(&p, "").unwrap();
        let e = server_config(&p, &p, &[]).unwrap_err().to_string();
        assert!(e.contains("empty.pem"), "{e}");
    }
}
