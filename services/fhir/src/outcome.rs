//! Errors as FHIR answers them: an OperationOutcome with the HTTP status
//! that fits. The text names the parameter and the reason, never a
//! participant's data.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

pub(crate) type Body = Full<Bytes>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub status: StatusCode,
    /// FHIR's issue type: `invalid`, `not-supported`, `not-found`, ...
    pub code: &'static str,
    pub text: String,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, code: &'static str, text: impl Into<String>) -> Self {
        Self {
            status,
            code,
            text: text.into(),
        }
    }

    pub(crate) fn invalid(text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", text)
    }

    pub(crate) fn not_supported(text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "not-supported", text)
    }

    pub(crate) fn not_found(text: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", text)
    }

    pub(crate) fn unavailable(text: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "transient", text)
    }

    pub(crate) fn response(&self) -> Response<Body> {
        let mut r = fhir_json(
            self.status,
            &json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": self.code, "diagnostics": self.text}],
            }),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "a FHIR request could not reach the database");
        Problem::unavailable("the database is not answering; try again")
    }
}

impl From<tend_fhir::Error> for Problem {
    fn from(e: tend_fhir::Error) -> Self {
        match e {
            tend_fhir::Error::Export(tend_export::Error::Database(e)) => e.into(),
            other => {
                tracing::warn!(error = %other, "a FHIR read failed");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    other.to_string(),
                )
            }
        }
    }
}

pub(crate) fn fhir_json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    with_type(status, "application/fhir+json", body.to_string().into())
}

pub(crate) fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}
