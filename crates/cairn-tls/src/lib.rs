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

pub mod ca;
pub mod dev;
pub mod identity;

pub use identity::NodeName;

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
    let roots = roots(ca)?;
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
///
/// [`Reloading::mutual`] adds the deployment's CA: then the server
/// settings ask every client for a certificate issued by that CA, and
/// [`Reloading::client_config`] presents this node's certificate to the
/// nodes it calls ([`connect`]), for the peer listener.
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    /// The CA whose client certificates the server accepts, optionally
    /// ([`Reloading::with_clients`]).
    clients: Option<PathBuf>,
    alpn: &'static [&'static [u8]],
    state: Mutex<State>,
}

/// gRPC's application protocol (HTTP/2), which gRPC clients require.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// What one load of the files makes.
#[derive(Clone)]
struct Loaded {
    server: Arc<ServerConfig>,
    /// With a CA: the settings to call other nodes with.
    client: Option<Arc<rustls::ClientConfig>>,
    /// With a CA: the node this node's certificate names.
    node: Option<NodeName>,
}

struct State {
    loaded: Loaded,
    stamps: Vec<Option<SystemTime>>,
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

/// The files' modification times, to notice a change.
fn stamps(cert: &Path, key: &Path, cas: [Option<&Path>; 2]) -> Vec<Option<SystemTime>> {
    let mut v = vec![modified(cert), modified(key)];
    v.extend(cas.into_iter().flatten().map(modified));
    v
}

/// Server settings that ask clients for a certificate issued by the CA
/// in `clients` and let those without one in (which identity a
/// certificate gives is the front end's business).
fn optional_clients(
    cert_path: &Path,
    key_path: &Path,
    clients: &Path,
    alpn: &'static [&'static [u8]],
) -> Result<Arc<ServerConfig>, Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(clients)?),
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| file_error(clients, e))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert_path)?, load_key(key_path)?)
        .map_err(|e| {
            Error::Tls(format!(
                "{} and {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

/// Builds the settings from the files.
fn load(
    cert_path: &Path,
    key_path: &Path,
    (ca, clients): (Option<&Path>, Option<&Path>),
    alpn: &'static [&'static [u8]],
) -> Result<Loaded, Error> {
    let Some(ca) = ca else {
        return Ok(Loaded {
            server: match clients {
                Some(c) => optional_clients(cert_path, key_path, c, alpn)?,
                None => server_config(cert_path, key_path, alpn)?,
            },
            client: None,
            node: None,
        });
    };
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let node = identity::node_of(&certs[0]).map_err(|e| file_error(cert_path, e))?;
    let roots = Arc::new(roots(ca)?);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| file_error(ca, e))?;
    let pair_error = |e: rustls::Error| {
        Error::Tls(format!(
            "{} and {}: {e}",
            cert_path.display(),
            key_path.display()
        ))
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(pair_error)?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Peer connections are long-lived: no session resumption, so every
    // connection proves its certificate again.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DeploymentVerifier {
            roots,
            provider: provider(),
        }))
        .with_client_auth_cert(certs, key)
        .map_err(pair_error)?;
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Loaded {
        server: Arc::new(server),
        client: Some(Arc::new(client)),
        node: Some(node),
    })
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
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
        Self::load_new(cert, key, (None, None), alpn)
    }

    /// The same, asking clients for a certificate issued by the CA in
    /// `clients` (`[tls] client_ca_file`), which they may present or not:
    /// LDAP's SASL EXTERNAL and hosts that prove who they are
    /// ([`identity::entry_of`]).
    pub fn with_clients(
        cert: &Path,
        key: &Path,
        clients: Option<&Path>,
        alpn: &'static [&'static [u8]],
    ) -> Result<Reloading, Error> {
        Self::load_new(cert, key, (None, clients), alpn)
    }

    /// Whether clients may present a certificate
    /// ([`Reloading::with_clients`]).
    pub fn accepts_clients(&self) -> bool {
        self.clients.is_some()
    }

    /// Mutual TLS between the nodes of a deployment: clients must present
    /// a certificate issued by the CA in `ca`, and this node's own
    /// certificate must name a node ([`identity::node_of`]), which it
    /// presents when it calls others.
    pub fn mutual(
        ca: &Path,
        cert: &Path,
        key: &Path,
        alpn: &'static [&'static [u8]],
    ) -> Result<Reloading, Error> {
        Self::load_new(cert, key, (Some(ca), None), alpn)
    }

    fn load_new(
        cert: &Path,
        key: &Path,
        (ca, clients): (Option<&Path>, Option<&Path>),
        alpn: &'static [&'static [u8]],
    ) -> Result<Reloading, Error> {
        let ca = ca.map(Path::to_path_buf);
        let clients = clients.map(Path::to_path_buf);
        let stamps = stamps(cert, key, [ca.as_deref(), clients.as_deref()]);
        let loaded = load(cert, key, (ca.as_deref(), clients.as_deref()), alpn)?;
        Ok(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca,
            clients,
            alpn,
            state: Mutex::new(State {
                loaded,
                stamps,
                loads: 1,
                error: None,
                failed_at: None,
            }),
        })
    }

    /// What the files hold now, read again first if they changed since
    /// they were last read.
    fn current(&self) -> Loaded {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let cas = [self.ca.as_deref(), self.clients.as_deref()];
        let stamps = stamps(&self.cert, &self.key, cas);
        let retry = st.failed_at.is_some_and(|t| t.elapsed() >= RETRY);
        if stamps != st.stamps || retry {
            st.stamps = stamps;
            match load(&self.cert, &self.key, cas.into(), self.alpn) {
                // A renewal that names another node is not this node's.
                Ok(l) if l.node != st.loaded.node => {
                    st.error = Some(format!(
                        "{}: names {} instead of {}; kept the previous certificate",
                        self.cert.display(),
                        l.node.map(|n| n.to_string()).unwrap_or_default(),
                        st.loaded
                            .node
                            .as_ref()
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                    ));
                    st.failed_at = Some(std::time::Instant::now());
                }
                Ok(l) => {
                    st.loaded = l;
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
        st.loaded.clone()
    }

    /// The server settings for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current().server
    }

    /// With a CA ([`Reloading::mutual`]): the settings to call another
    /// node with, presenting this node's certificate.
    pub fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.current().client
    }

    /// With a CA: the node this node's certificate names.
    pub fn node(&self) -> Option<NodeName> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .loaded
            .node
            .clone()
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

/// The CA certificate(s) in a PEM file.
fn roots(ca: &Path) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| file_error(ca, e))?;
    }
    Ok(roots)
}

/// How a node checks the node it calls: the certificate must be issued by
/// the deployment's CA (checked here, during the handshake); which node
/// it names is checked by the caller once the handshake is done
/// ([`connect`]), since one node reaches others by addresses that need
/// not appear in their certificates (another site's network, a NAT).
#[derive(Debug)]
struct DeploymentVerifier {
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for DeploymentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The node that presented the first of `certs` (a verified chain).
/// Every peer request asks this of its connection's certificate: the
/// names of the certificates seen are kept (by their exact bytes, at most
/// [`PEER_NAMES_KEPT`]), so a certificate is parsed once, not once per
/// Raft message.
pub fn peer_node(certs: Option<&[CertificateDer<'_>]>) -> Result<NodeName, String> {
    let first = certs
        .and_then(|c| c.first())
        .ok_or("no client certificate")?;
    static NAMES: Mutex<Option<std::collections::HashMap<Vec<u8>, NodeName>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let names = names.get_or_insert_with(Default::default);
    if let Some(n) = names.get(first.as_ref()) {
        return Ok(n.clone());
    }
    let n = identity::node_of(first).map_err(|e| e.to_string())?;
    if names.len() >= PEER_NAMES_KEPT {
        names.clear();
    }
    names.insert(first.as_ref().to_vec(), n.clone());
    Ok(n)
}

/// How many peer certificates' names [`peer_node`] keeps.
pub const PEER_NAMES_KEPT: usize = 256;

/// A client-side TLS handshake to another node over `tcp`, presenting this
/// node's certificate, within `timeout`; answers the node the other side's
/// certificate names. Needs [`Reloading::mutual`].
pub async fn connect(
    tls: &Reloading,
    tcp: tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    NodeName,
)> {
    let other = |e: String| std::io::Error::other(e);
    let config = tls
        .client_config()
        .ok_or_else(|| other("TLS to other nodes needs the deployment's CA".into()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    // The name is not checked (see DeploymentVerifier); the node is.
    let name =
        rustls_pki_types::ServerName::try_from("cairn-node").map_err(|e| other(e.to_string()))?;
    let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake did not finish in time",
            ))
        })?;
    let node = peer_node(stream.get_ref().1.peer_certificates()).map_err(other)?;
    Ok((stream, node))
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

    /// A node of the deployment, its files under `dir`.
    fn node(dir: &Path, site: &str, id: u64) -> Reloading {
        let f = dev::ensure_node(dir, &["127.0.0.1".into()], &NodeName::new(site, id)).unwrap();
        Reloading::mutual(&f.ca, &f.cert, &f.key, ALPN_GRPC).unwrap()
    }

    /// Accepts one connection on `listener` and answers the node its
    /// client certificate names, or the handshake's error.
    async fn accept_one(
        listener: &tokio::net::TcpListener,
        tls: &Reloading,
    ) -> Result<NodeName, String> {
        let (tcp, _) = listener.accept().await.unwrap();
        let s = accept(tls, tcp, std::time::Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        peer_node(s.get_ref().1.peer_certificates())
    }

    /// A certificate's name is parsed once and then recalled by its exact
    /// bytes; each certificate keeps its own name, and one that names no
    /// node is refused every time.
    #[test]
    fn peer_names_are_recalled_per_certificate() {
        let ca = ca::Ca::create("test").unwrap();
        let der = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        let a = NodeName::new("east", 1);
        let b = NodeName::new("west", 1);
        let cert_a = der(&ca.issue(&["a".into()], Some(&a)).unwrap().cert_pem);
        let cert_b = der(&ca.issue(&["b".into()], Some(&b)).unwrap().cert_pem);
        let plain = der(&ca.issue(&["c".into()], None).unwrap().cert_pem);
        for _ in 0..2 {
            assert_eq!(peer_node(Some(std::slice::from_ref(&cert_a))).unwrap(), a);
            assert_eq!(peer_node(Some(std::slice::from_ref(&cert_b))).unwrap(), b);
            assert!(peer_node(Some(std::slice::from_ref(&plain))).is_err());
        }
        assert!(peer_node(None).is_err());
    }

    #[tokio::test]
    async fn nodes_of_one_deployment_prove_who_they_are_and_strangers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let server = node(tmp.path(), "east", 1);
        assert_eq!(server.node(), Some(NodeName::new("east", 1)));
        let client = node(tmp.path(), "west", 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = std::time::Duration::from_secs(5);

        // Both sides learn the other's node.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (seen_by_server, dialled) = tokio::join!(
            accept_one(&listener, &server),
            connect(&client, tcp, timeout)
        );
        assert_eq!(seen_by_server, Ok(NodeName::new("west", 2)));
        assert_eq!(dialled.unwrap().1, NodeName::new("east", 1));

        // A node of another deployment (another CA) is refused by the
        // server, and refuses the server.
        let other = tempfile::tempdir().unwrap();
        let stranger = node(other.path(), "east", 2);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (seen_by_server, dialled) = tokio::join!(
            accept_one(&listener, &server),
            connect(&stranger, tcp, timeout)
        );
        assert!(seen_by_server.is_err(), "{seen_by_server:?}");
        assert!(dialled.is_err());

        // A client that trusts the CA but has no certificate is refused.
        let anonymous =
            tokio_rustls::TlsConnector::from(client_config(&tmp.path().join("ca.pem")).unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let (seen_by_server, _) = tokio::join!(accept_one(&listener, &server), async {
            use tokio::io::AsyncReadExt;
            // TLS 1.3 clients learn of the refusal at their first read.
            let mut s = anonymous.connect(name, tcp).await?;
            s.read(&mut [0u8; 1]).await
        });
        assert!(seen_by_server.is_err(), "{seen_by_server:?}");

        // A certificate of the CA that names no node is no node's.
        let plain = dev::ensure(tmp.path(), &["127.0.0.1".into()]).unwrap();
        let e =
            Reloading::mutual(&plain.ca, &plain.cert, &plain.key, ALPN_GRPC).expect_err("refused");
        assert!(e.to_string().contains("names no Cairn node"), "{e}");
    }

    /// A client with a certificate of the clients' CA is known by the
    /// entry it names; one without any gets in too (nothing is proven);
    /// one with another CA's certificate is refused.
    #[tokio::test]
    async fn optional_client_certificates_name_a_directory_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let files = dev::ensure(tmp.path(), &["127.0.0.1".into()]).unwrap();
        let server =
            Reloading::with_clients(&files.cert, &files.key, Some(&files.ca), &[]).unwrap();
        assert!(server.accepts_clients());
        let (ca, _) = ca::Ca::open_or_create(tmp.path(), dev::CA_NAME).unwrap();
        let bob = "cn=Bob Smith\\, Jr.,ou=people,dc=example,dc=com";
        let pair = ca.issue_client(bob).unwrap();
        let (cert, key) = (tmp.path().join("bob.pem"), tmp.path().join("bob-key.pem"));
        pair.write(&cert, &key).unwrap();
        let other = tempfile::tempdir().unwrap();
        let (stranger_ca, _) = ca::Ca::open_or_create(other.path(), "another CA").unwrap();
        let (scert, skey) = (other.path().join("s.pem"), other.path().join("s-key.pem"));
        stranger_ca
            .issue_client(bob)
            .unwrap()
            .write(&scert, &skey)
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = std::time::Duration::from_secs(5);
        let client = |with: Option<(&Path, &Path)>| {
            let roots = roots(&files.ca).unwrap();
            let b = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let cfg = match with {
                Some((c, k)) => b
                    .with_client_auth_cert(load_certs(c).unwrap(), load_key(k).unwrap())
                    .unwrap(),
                None => b.with_no_client_auth(),
            };
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        };
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let seen = |with: Option<(&Path, &Path)>| {
            let connector = client(with);
            let (server, listener, name) = (&server, &listener, name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (accepted, _dialled) = tokio::join!(
                    async {
                        let (tcp, _) = listener.accept().await.unwrap();
                        accept(server, tcp, timeout).await
                    },
                    async {
                        use tokio::io::AsyncReadExt;
                        let mut s = connector.connect(name, tcp).await?;
                        // TLS 1.3 clients learn of a refusal at their
                        // first read; the server closes after accepting.
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_millis(200),
                            s.read(&mut [0u8; 1]),
                        )
                        .await;
                        Ok::<_, std::io::Error>(())
                    }
                );
                accepted.map(|s| {
                    s.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(identity::entry_of)
                })
            }
        };
        let got = seen(Some((&cert, &key))).await.unwrap();
        assert_eq!(got, Some(Ok(bob.to_string())));
        assert_eq!(seen(None).await.unwrap(), None);
        assert!(seen(Some((&scert, &skey))).await.is_err());
    }

    #[test]
    fn a_renewal_that_names_another_node_is_not_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let me = node(tmp.path(), "east", 1);
        let other =
            dev::ensure_node(tmp.path(), &["127.0.0.1".into()], &NodeName::new("east", 2)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mine =
            dev::ensure_node(tmp.path(), &["127.0.0.1".into()], &NodeName::new("east", 1)).unwrap();
        std::fs::copy(&other.cert, &mine.cert).unwrap();
        std::fs::copy(&other.key, &mine.key).unwrap();
        let _ = me.config();
        assert_eq!(me.node(), Some(NodeName::new("east", 1)));
        assert!(
            me.last_error().unwrap().contains("node 2 of site east"),
            "{:?}",
            me.last_error()
        );
    }
}
