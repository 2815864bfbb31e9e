//! No TLS client on this CPU architecture (graviola, the TLS client's cryptography, is written
//! for x86_64 and aarch64 only); a TLS endpoint is reported as not reached, with this reason.

use super::DockerError;
use super::endpoint::TlsFiles;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Never made: [`config`] always refuses.
pub enum Config {}

pub fn config(_files: &TlsFiles) -> Result<Config, DockerError> {
    Err(DockerError::Tls(
        "this build of dockroute has no TLS client on this CPU architecture; give the engine's plain port with --docker tcp://IP:2375 or a unix socket".into(),
    ))
}

pub async fn connect<S>(cfg: &Arc<Config>, _ip: IpAddr, _stream: S) -> std::io::Result<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match **cfg {}
}
