//! TLS on the gRPC port (rustls, ring): a certificate and key from files,
//! optionally a client CA that every connection must present a certificate
//! of (mTLS). The files are read again when they change (cert-manager
//! rotates them in place), without a restart: new connections get the new
//! certificate, connections already open keep theirs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate, its key and the client CA are.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// How often the files are looked at for a change.
    pub reload_every: Duration,
}

/// A server configuration and what it was built from.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub config: Arc<ServerConfig>,
    /// The files' bytes, to notice a change.
    contents: Vec<Vec<u8>>,
    /// SHA-256 of the leaf certificate, for the log.
    pub fingerprint: String,
}

impl TlsFiles {
    /// Reads the files and builds the configuration: at start-up (a bad
    /// file stops it, naming the setting) and at each change.
    pub(crate) fn load(&self) -> Result<Loaded> {
        let mut contents = vec![
            read(&self.cert, "TEND_TLS_CERT")?,
            read(&self.key, "TEND_TLS_KEY")?,
        ];
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&contents[0])
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                format!(
                    "TEND_TLS_CERT {}: not a PEM certificate chain: {e}",
                    self.cert.display()
                )
            })?;
        let Some(leaf) = chain.first() else {
            return Err(format!(
                "TEND_TLS_CERT {}: holds no certificate",
                self.cert.display()
            )
            .into());
        };
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let key = PrivateKeyDer::from_pem_slice(&contents[1]).map_err(|e| {
            format!(
                "TEND_TLS_KEY {}: not a PEM private key: {e}",
                self.key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let pem = read(path, "TEND_TLS_CLIENT_CA")?;
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        format!(
                            "TEND_TLS_CLIENT_CA {}: not a PEM certificate: {e}",
                            path.display()
                        )
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("TEND_TLS_CLIENT_CA {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "TEND_TLS_CLIENT_CA {}: holds no certificate",
                        path.display()
                    )
                    .into());
                }
                contents.push(pem);
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("TEND_TLS_CLIENT_CA {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "TEND_TLS_CERT and TEND_TLS_KEY ({}, {}): {e}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        // HTTP/2 for gRPC, HTTP/1.1 for gRPC-Web from browsers.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            contents,
            fingerprint,
        })
    }
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{setting} {}: {e}", path.display()).into())
}

/// Looks at the files every `reload_every` and publishes a new
/// configuration when they changed and load; a change that does not load
/// (a rotation caught half-written) keeps the one in use and is logged.
pub(crate) async fn reload(
    files: TlsFiles,
    mut loaded: Loaded,
    publish: watch::Sender<Arc<ServerConfig>>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(files.reload_every) => {}
        }
        let files_now = files.clone();
        let changed = match tokio::task::spawn_blocking(move || -> Result<Option<Vec<Vec<u8>>>> {
            let mut now = vec![
                read(&files_now.cert, "TEND_TLS_CERT")?,
                read(&files_now.key, "TEND_TLS_KEY")?,
            ];
            if let Some(ca) = &files_now.client_ca {
                now.push(read(ca, "TEND_TLS_CLIENT_CA")?);
            }
            Ok(Some(now))
        })
        .await
        {
            Ok(Ok(Some(now))) => now != loaded.contents,
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the TLS files; serving with the certificate already loaded");
                }
                failing = true;
                continue;
            }
            Err(_) => continue,
        };
        if !changed {
            continue;
        }
        let files_now = files.clone();
        match tokio::task::spawn_blocking(move || files_now.load()).await {
            Ok(Ok(next)) => {
                tracing::info!(
                    fingerprint = %next.fingerprint,
                    previous = %loaded.fingerprint,
                    "TLS files changed: new connections get the new certificate"
                );
                let _ = publish.send(next.config.clone());
                loaded = next;
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "the TLS files changed but do not load; serving with the certificate already loaded until they do");
                }
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Accepted TLS connections: each handshake on a task of its own (a slow
/// or silent client holds up no one), under the configuration current
/// when the connection came.
pub(crate) fn incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    http1_only: bool,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let current = config.borrow().clone();
            let acceptor = tokio_rustls::TlsAcceptor::from(if http1_only {
                // The FHIR port speaks HTTP/1.1 only: offering h2 would
                // let a client choose what it cannot get.
                let mut only = (*current).clone();
                only.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(only)
            } else {
                current
            });
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
