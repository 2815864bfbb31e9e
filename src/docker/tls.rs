//! TLS to a Docker engine: rustls with ring, trusting only the CA file of the endpoint's source
//! and proving the client with the certificate and key next to it. The files are read like
//! docker-machine's store: with the rights of the user who can change them, at most 1 MiB, never
//! through a symbolic link ([`crate::machine::read_regular_file`]).

use super::DockerError;
use super::endpoint::TlsFiles;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub type Config = rustls::ClientConfig;

/// The client configuration for `files`.
pub fn config(files: &TlsFiles) -> Result<Config, DockerError> {
    let read = |p: &Path| {
        crate::machine::reader(p)
            .and_then(|reader| crate::machine::read_regular_file(p, reader))
            .map_err(|e| DockerError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let bad =
        |p: &Path, what: &str| DockerError::Tls(format!("{} holds no usable {what}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&files.ca)?) {
        let cert = cert.map_err(|_| bad(&files.ca, "PEM certificate"))?;
        roots
            .add(cert)
            .map_err(|_| bad(&files.ca, "CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(bad(&files.ca, "CA certificate"));
    }
    let chain = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad(&files.cert, "PEM certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|_| bad(&files.key, "PEM private key"))?;
    // ring, not aws-lc-rs: no cmake or C++ toolchain in the build. rustls 0.23.48 marks ring's
    // provider deprecated because it has no post-quantum key exchange; X25519 and the NIST
    // curves, which every Docker engine (Go's crypto/tls) offers, are what it negotiates.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| DockerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| DockerError::Tls(format!("{}: {e}", files.cert.display())))
}

/// TLS over `stream` to the engine at `ip` (its certificate must name that IP).
pub async fn connect<S>(
    cfg: &Arc<Config>,
    ip: IpAddr,
    stream: S,
) -> std::io::Result<impl AsyncRead + AsyncWrite + Unpin + Send + 'static>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::IpAddress(ip.into()), stream)
        .await
}
