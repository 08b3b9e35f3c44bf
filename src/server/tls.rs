//! STARTTLS towards clients (RFC 3207): loading the configured certificate and key into a
//! rustls acceptor. Errors name the file and say what was expected, since a broken PEM file
//! is the usual first-day problem.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Builds the acceptor from `[tls] cert` and `key`.
pub fn acceptor(tls: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = load_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).with_context(|| {
        format!(
            "tls.key: cannot read a PEM private key from {} (expected a \"-----BEGIN PRIVATE KEY-----\" block)",
            tls.key.display()
        )
    })?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "tls.cert / tls.key: {} and {} do not form a usable pair (does the key belong to the certificate?)",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "tls.cert: cannot read PEM certificates from {}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "tls.cert: {} holds no \"-----BEGIN CERTIFICATE-----\" block",
            path.display()
        );
    }
    Ok(certs)
}
