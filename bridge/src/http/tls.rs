//! TLS: the rustls server configuration, and the simple profile's self-made certificates.
//!
//! The simple profile makes a small local CA (`ca.crt`, `ca.key`) and a server certificate signed
//! by it (`tls.crt`, `tls.key`). Clients and kube-apiserver trust `ca.crt`; when `--tls-san`
//! names change, only the server certificate is re-issued, so that trust survives.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was missing.
        what: &'static str,
    },
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used for verification.
    #[error("client CA {path}: {why}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Where the server's certificate, key and (optional) client CA are.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle for client certificates; none disables client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// PEM CA bundle for the trusted authenticating proxy's client certificate.
    pub proxy_ca_file: Option<PathBuf>,
}

fn roots(ca: &Path, roots: &mut RootCertStore) -> Result<(), TlsError> {
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::ClientCa {
            path: ca.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// A verifier that accepts only client certificates issued by the CA in `ca`.
///
/// # Errors
/// If the file is unreadable or holds no usable CA.
pub fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut store = RootCertStore::empty();
    roots(ca, &mut store)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| TlsError::ClientCa {
            path: ca.to_path_buf(),
            why: e.to_string(),
        })
}

/// Whether `chain` (end entity first) verifies with `verifier` now.
#[must_use]
pub fn verify_chain(
    verifier: &dyn rustls::server::danger::ClientCertVerifier,
    chain: Option<&[CertificateDer<'static>]>,
) -> bool {
    let Some((end, intermediates)) = chain.and_then(<[_]>::split_first) else {
        return false;
    };
    verifier
        .verify_client_cert(end, intermediates, rustls::pki_types::UnixTime::now())
        .is_ok()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = fs::read(path).map_err(io(path))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            path: path.to_owned(),
            what: "not a valid PEM certificate file",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no PEM certificate found",
        });
    }
    Ok(certs)
}

/// Builds the rustls server configuration (aws-lc-rs, TLS 1.2 and 1.3, ALPN h2 and http/1.1).
/// Client certificates are optional; when a client CA is set, presented ones must verify.
///
/// # Errors
/// If a file is unreadable or rustls refuses the material.
pub fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = load_certs(&tls.cert_file)?;
    let key_data = fs::read(&tls.key_file).map_err(io(&tls.key_file))?;
    let key = PrivateKeyDer::from_pem_slice(&key_data).map_err(|_| TlsError::Pem {
        path: tls.key_file.clone(),
        what: "no valid PEM private key found",
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let cas: Vec<&PathBuf> = tls
        .client_ca_file
        .iter()
        .chain(tls.proxy_ca_file.iter())
        .collect();
    let builder = match cas.first() {
        Some(ca) => {
            let ca = (*ca).clone();
            let mut store = RootCertStore::empty();
            for c in &cas {
                roots(c, &mut store)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Writes `contents` to `path` atomically with mode 0600 (the file is complete or absent).
///
/// # Errors
/// If the directory is not writable.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "idbridge local CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// Makes sure `dir` holds a local CA and a server certificate covering `sans`; returns the paths
/// of the server certificate, its key and the CA certificate.
///
/// # Errors
/// If files cannot be read or written, or generation fails.
pub fn ensure_self_signed(dir: &Path, sans: &[String]) -> Result<(ServerTls, PathBuf), TlsError> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let tls_crt = dir.join("tls.crt");
    let tls_key = dir.join("tls.key");
    let sans_file = dir.join("tls.sans");
    let ca_key_pair = if ca_key.exists() && ca_crt.exists() {
        let pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        KeyPair::from_pem(&pem)?
    } else {
        let kp = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&kp)?;
        write_private(&ca_key, kp.serialize_pem().as_bytes()).map_err(io(&ca_key))?;
        write_private(&ca_crt, cert.pem().as_bytes()).map_err(io(&ca_crt))?;
        // A new CA invalidates any older server certificate.
        let _ = fs::remove_file(&sans_file);
        kp
    };
    let mut wanted: Vec<String> = sans.to_vec();
    wanted.sort();
    wanted.dedup();
    let current = fs::read_to_string(&sans_file).unwrap_or_default();
    if current != wanted.join("\n") || !tls_crt.exists() || !tls_key.exists() {
        let issuer = Issuer::new(ca_params()?, &ca_key_pair);
        let leaf_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(wanted.clone())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "idbridge");
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(825);
        let leaf = p.signed_by(&leaf_key, &issuer)?;
        let ca_pem = fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
        write_private(&tls_key, leaf_key.serialize_pem().as_bytes()).map_err(io(&tls_key))?;
        write_private(&tls_crt, format!("{}{ca_pem}", leaf.pem()).as_bytes())
            .map_err(io(&tls_crt))?;
        write_private(&sans_file, wanted.join("\n").as_bytes()).map_err(io(&sans_file))?;
    }
    Ok((
        ServerTls {
            proxy_ca_file: None,
            cert_file: tls_crt,
            key_file: tls_key,
            client_ca_file: None,
        },
        ca_crt,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_loads_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (tls, ca) = ensure_self_signed(dir.path(), &sans).unwrap();
        server_config(&tls).unwrap();
        let first = fs::read(&tls.cert_file).unwrap();
        let ca_first = fs::read(&ca).unwrap();
        ensure_self_signed(dir.path(), &sans).unwrap();
        assert_eq!(fs::read(&tls.cert_file).unwrap(), first);
        let more = vec!["idbridge.example.com".to_owned(), "localhost".to_owned()];
        ensure_self_signed(dir.path(), &more).unwrap();
        assert_ne!(fs::read(&tls.cert_file).unwrap(), first);
        assert_eq!(fs::read(&ca).unwrap(), ca_first);
    }
}
