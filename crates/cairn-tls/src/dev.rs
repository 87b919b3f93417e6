//! A deployment CA and a server certificate signed by it, for a lab or
//! the dev modes: `cairnd dev` keeps them under `<data dir>/tls/` and
//! points clients at `ca.pem` (`LDAPTLS_CACERT` for OpenLDAP's tools).
//! Production certificates come from the operator's own CA, named in the
//! configuration.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// The files [`ensure`] keeps.
#[derive(Debug, Clone)]
pub struct Files {
    /// The CA's certificate: what clients trust.
    pub ca: PathBuf,
    /// The server's certificate, then the CA's.
    pub cert: PathBuf,
    /// The server's private key (mode 0600).
    pub key: PathBuf,
}

fn gen_err(e: impl ToString) -> Error {
    Error::Generate(e.to_string())
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// The CA and server certificate in `dir`, made there first when any of
/// the files is missing or the certificate was made for other names: a
/// new CA (`Cairn deployment CA`) and a certificate for `names` (DNS
/// names and IP addresses) signed by it, valid until 2036. Files made for
/// the same names are used as they are.
pub fn ensure(dir: &Path, names: &[String]) -> Result<Files, Error> {
    let files = Files {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    let names_file = dir.join("names");
    let wanted = names.join("\n") + "\n";
    let made_for = std::fs::read_to_string(&names_file).ok();
    if files.ca.exists()
        && files.cert.exists()
        && files.key.exists()
        && made_for.as_deref() == Some(wanted.as_str())
    {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.to_path_buf(),
        why: e.to_string(),
    })?;
    let now = rcgen::date_time_ymd(2026, 1, 1);
    let until = rcgen::date_time_ymd(2036, 1, 1);

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Cairn deployment CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now;
    ca.not_after = until;
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(gen_err)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("cairn"),
    );
    server.distinguished_name = dn;
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    server.not_before = now;
    server.not_after = until;
    let server_key = KeyPair::generate().map_err(gen_err)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(gen_err)?;

    // The key first: a certificate without its key is never left behind
    // to be taken for a complete pair.
    write(&files.key, &server_key.serialize_pem(), true)?;
    write(
        &files.cert,
        &format!("{}{}", server_cert.pem(), ca_cert.pem()),
        false,
    )?;
    write(&files.ca, &ca_cert.pem(), false)?;
    write(&names_file, &wanted, false)?;
    Ok(files)
}
