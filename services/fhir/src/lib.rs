//! FHIR R4 over HTTP, beside the gRPC port: the Bulk Data `$export`
//! (`jobs`, run in the background) and single reads (`http`). Read only:
//! Tend accepts no FHIR writes.

mod http;
pub mod jobs;
mod outcome;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tend_auth::Authenticator;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use jobs::{Jobs, Settings};

/// The FHIR endpoint: shared by every connection.
#[derive(Clone)]
pub struct Fhir {
    jobs: Jobs,
    auth: Authenticator,
    /// The base URL that links in answers use; by default the request's
    /// own `Host` under `/fhir`.
    base_url: Option<String>,
}

/// What a connection brings to its requests.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Whether it came over TLS (the scheme of links).
    pub tls: bool,
    /// The client certificate the handshake verified, if any.
    pub certificate: Option<Vec<u8>>,
}

impl std::fmt::Debug for Fhir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fhir")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Fhir {
    pub fn new(jobs: Jobs, auth: Authenticator, base_url: Option<String>) -> Self {
        Self {
            jobs,
            auth,
            base_url: base_url.map(|b| b.trim_end_matches('/').to_owned()),
        }
    }

    /// Serves one connection (HTTP/1.1) until it closes or `shutdown`.
    pub async fn serve_connection<I>(
        self: Arc<Self>,
        io: I,
        connection: Connection,
        shutdown: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = Arc::new(connection);
        let service = hyper::service::service_fn(move |request| {
            let fhir = self.clone();
            let connection = connection.clone();
            async move { Ok::<_, std::convert::Infallible>(fhir.handle(request, &connection).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(served);
        tokio::select! {
            _ = served.as_mut() => {}
            _ = shutdown.cancelled() => {
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
            }
        }
    }
}
