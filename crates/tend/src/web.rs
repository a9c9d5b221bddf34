//! gRPC-Web on the gRPC port, for browser portals: CORS for the configured
//! origins, and HTTP/1.1 request bodies read whole before a call runs.
//!
//! The second matters for refusals: a call refused before its body is read
//! (a missing token, say) is answered at once, and over HTTP/1.1 the server
//! then closes a connection whose body the client is still sending, so the
//! client sees a broken pipe instead of UNAUTHENTICATED. gRPC-Web requests
//! are one message (it has no client streaming), so reading them first
//! costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The largest request body read: tonic's own default message limit and
/// the frame header, as base64 (gRPC-Web's text form) at most.
const MAX_BODY: usize = (4 * 1024 * 1024 + 5) * 4 / 3 + 4;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn refusal(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// CORS for gRPC-Web: the configured origins only, the headers a gRPC-Web
/// client sends (its token included) and the status headers it must read.
pub(crate) fn cors(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::POST])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// Reads HTTP/1.x request bodies whole before passing the request on.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WholeBodies;

impl<S> tower_layer::Layer<S> for WholeBodies {
    type Service = WholeBodiesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WholeBodiesService { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct WholeBodiesService<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower_service::Service<Request<Body>> for WholeBodiesService<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.version() >= Version::HTTP_2 {
            return Box::pin(self.inner.call(request));
        }
        // The clone is ready only if polled: swap so the one polled runs.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Bounded in size and in time: a client trickling its body
            // holds nothing for long.
            let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect());
            let bytes = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(_)) => return Ok(refusal(StatusCode::PAYLOAD_TOO_LARGE)),
                Err(_) => return Ok(refusal(StatusCode::REQUEST_TIMEOUT)),
            };
            inner
                .call(Request::from_parts(parts, Body::new(Full::new(bytes))))
                .await
        })
    }
}
