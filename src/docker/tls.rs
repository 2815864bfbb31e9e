//! TLS to a Docker engine: rustls with graviola's cryptography (the same code on Linux and
//! macOS), trusting only the CA file of the endpoint's source and proving the client with the
//! certificate and key next to it. The files are read like docker-machine's store: with the
//! rights of the user who can change them, at most 1 MiB, never through a symbolic link
//! ([`crate::machine::read_regular_file`]).

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
    cpu_supported()?;
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
    // graviola, not ring or aws-lc-rs: pure Rust, so no C compiler, cmake or Apple SDK in the
    // build. It signs with RSA (docker-machine's 2048-bit keys, PKCS#1 or PKCS#8), ECDSA P-256
    // and P-384 (SEC1 or PKCS#8) and Ed25519, verifies the same, and offers X25519MLKEM768,
    // X25519 and the NIST curves.
    let provider = rustls_graviola::default_provider();
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| DockerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| DockerError::Tls(format!("{}: {e}", files.cert.display())))
}

/// graviola asserts (a panic, which aborts a release build) that the CPU has the instructions it
/// is written with; this checks the same (a superset) first, so that such a CPU gets a refusal:
/// x86_64 from about 2014 on (Broadwell; not Haswell, which lacks ADX), any Apple silicon.
fn cpu_supported() -> Result<(), DockerError> {
    #[cfg(target_arch = "x86_64")]
    let has = [
        ("aes", std::arch::is_x86_feature_detected!("aes")),
        (
            "pclmulqdq",
            std::arch::is_x86_feature_detected!("pclmulqdq"),
        ),
        ("ssse3", std::arch::is_x86_feature_detected!("ssse3")),
        ("avx", std::arch::is_x86_feature_detected!("avx")),
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("bmi1", std::arch::is_x86_feature_detected!("bmi1")),
        ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
        ("adx", std::arch::is_x86_feature_detected!("adx")),
    ];
    #[cfg(target_arch = "aarch64")]
    let has = [
        ("neon", std::arch::is_aarch64_feature_detected!("neon")),
        ("aes", std::arch::is_aarch64_feature_detected!("aes")),
        ("pmull", std::arch::is_aarch64_feature_detected!("pmull")),
        ("sha2", std::arch::is_aarch64_feature_detected!("sha2")),
    ];
    let missing: Vec<&str> = has
        .into_iter()
        .filter_map(|(name, has)| (!has).then_some(name))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DockerError::Tls(format!(
            "this CPU lacks the {} instructions that dockroute's TLS client (graviola) needs; give the engine's plain port with --docker tcp://IP:2375 or a unix socket",
            missing.join(", ")
        )))
    }
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
