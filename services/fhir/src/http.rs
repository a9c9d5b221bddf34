//! The routes: `[base]/metadata`, the three `$export` kick-offs, the status
//! of an export (`GET` to poll, `DELETE` to delete), its files, and
//! `GET [base]/Type/{id}`. Every route but `metadata` takes a bearer token,
//! as the gRPC port does, and sees only the token's tenant.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tend_fhir::Kind;
use tend_fhir::bulk::{Request as ExportRequest, Scope};
use tend_service_kit::streams;
use uuid::Uuid;

use crate::jobs::Kickoff;
use crate::outcome::{Body, Problem, fhir_json, with_type};
use crate::{Connection, Fhir};

/// Where the FHIR endpoint is on its port.
pub(crate) const BASE_PATH: &str = "/fhir";
/// The largest kick-off body (a Parameters resource) read.
const MAX_BODY: usize = 64 << 10;
/// Seconds a poller is asked to wait.
const RETRY_AFTER: &str = "2";

const NDJSON: &str = "application/fhir+ndjson";

impl Fhir {
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        connection: &Connection,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let route = route_name(request.uri().path());
        let response = match self.route(request, connection).await {
            Ok(r) => r,
            Err(p) => p.response(),
        };
        tend_telemetry::instruments().fhir_request_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                opentelemetry::KeyValue::new("http.route", route),
                opentelemetry::KeyValue::new(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                ),
            ],
        );
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        connection: &Connection,
    ) -> Result<Response<Body>, Problem> {
        let path = request.uri().path().to_owned();
        let Some(rest) = path
            .strip_prefix(BASE_PATH)
            .and_then(|r| r.strip_prefix('/').or(r.is_empty().then_some("")))
        else {
            return Err(Problem::not_found(format!(
                "the FHIR endpoint is at {BASE_PATH}"
            )));
        };
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = request.method().clone();
        if segments == ["metadata"] && method == Method::GET {
            return Ok(fhir_json(StatusCode::OK, &capability_statement()));
        }
        let tenant = self.tenant(&request, connection)?;
        let base = self.base(&request, connection);
        match (method.clone(), segments.as_slice()) {
            (Method::GET | Method::POST, ["$export"]) => {
                self.kick_off(request, &tenant, &base, Scope::System).await
            }
            (Method::GET | Method::POST, ["Patient", "$export"]) => {
                self.kick_off(request, &tenant, &base, Scope::Patient).await
            }
            (Method::GET | Method::POST, ["Group", group, "$export"]) => {
                let group = (*group).to_owned();
                self.group_exists(&tenant, &group).await?;
                self.kick_off(request, &tenant, &base, Scope::Group(group))
                    .await
            }
            (Method::GET, ["$export-status", id]) => self.status(&tenant, &base, id).await,
            (Method::DELETE, ["$export-status", id]) => {
                let id = export_id(id)?;
                if self.jobs.delete(tenant.as_str(), id).await? {
                    let mut r = fhir_json(StatusCode::ACCEPTED, &Value::Null);
                    *r.body_mut() = Default::default();
                    r.headers_mut().remove(header::CONTENT_TYPE);
                    Ok(r)
                } else {
                    Err(no_export())
                }
            }
            (Method::GET, ["$export-file", id, file]) => {
                let id = export_id(id)?;
                let file_no = file
                    .strip_suffix(".ndjson")
                    .and_then(|n| n.parse::<i32>().ok())
                    .ok_or_else(|| Problem::not_found("no such file in this export"))?;
                let data = self
                    .jobs
                    .file(tenant.as_str(), id, file_no)
                    .await?
                    .ok_or_else(|| Problem::not_found("no such file in this export"))?;
                Ok(with_type(StatusCode::OK, NDJSON, Bytes::from(data)))
            }
            (Method::GET, [kind, id]) => {
                let kind = Kind::parse(kind).ok_or_else(|| {
                    Problem::not_supported(format!("this server has no resources of type `{kind}`"))
                })?;
                match tend_fhir::read::read(
                    self.jobs.pool(),
                    self.jobs.directory(),
                    tenant.as_str(),
                    kind,
                    id,
                )
                .await?
                {
                    Some(body) => Ok(fhir_json(StatusCode::OK, &body)),
                    None => Err(Problem::not_found(format!(
                        "{}/{id} is not known to this server",
                        kind.name()
                    ))),
                }
            }
            (Method::GET, [kind]) if Kind::parse(kind).is_some() => Err(Problem::not_supported(
                "search is not supported: use $export, or read a resource by its id",
            )),
            (Method::POST | Method::PUT | Method::PATCH | Method::DELETE, [kind, ..])
                if Kind::parse(kind).is_some() =>
            {
                Err(Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "not-supported",
                    "this server is read only: it accepts no FHIR writes",
                ))
            }
            _ => Err(Problem::not_found(format!(
                "no {method} operation at {path}"
            ))),
        }
    }

    fn tenant(
        &self,
        request: &Request<Incoming>,
        connection: &Connection,
    ) -> Result<tend_event_store::TenantId, Problem> {
        let unauthorized = |text: &str| Problem::new(StatusCode::UNAUTHORIZED, "login", text);
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(tend_auth::bearer)
            .ok_or_else(|| {
                unauthorized("missing credentials: send an `Authorization: Bearer <token>` header")
            })?;
        self.auth
            .tenant(token, connection.certificate.as_deref())
            .map_err(unauthorized)
    }

    /// The base URL of links in answers.
    fn base(&self, request: &Request<Incoming>, connection: &Connection) -> String {
        if let Some(b) = &self.base_url {
            return b.clone();
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        let scheme = if connection.tls { "https" } else { "http" };
        format!("{scheme}://{host}{BASE_PATH}")
    }

    async fn group_exists(
        &self,
        tenant: &tend_event_store::TenantId,
        group: &str,
    ) -> Result<(), Problem> {
        if tend_domain::protocol::built_in(group).is_some() {
            return Ok(());
        }
        let exists = match streams::protocol(group) {
            Ok(stream) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM events
                                WHERE tenant_id = $1 AND stream_id = $2 AND stream_version = 0)",
                )
                .bind(tenant.as_str())
                .bind(stream.as_str())
                .fetch_one(self.jobs.pool())
                .await?
            }
            Err(_) => false,
        };
        if exists {
            Ok(())
        } else {
            Err(Problem::not_found(format!(
                "Group/{group} is not known to this server: a Group is a protocol's participants, named by the protocol's id"
            )))
        }
    }

    async fn kick_off(
        &self,
        request: Request<Incoming>,
        tenant: &tend_event_store::TenantId,
        base: &str,
        scope: Scope,
    ) -> Result<Response<Body>, Problem> {
        let prefer = request
            .headers()
            .get("prefer")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !prefer
            .split([',', ';'])
            .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        {
            return Err(Problem::invalid(
                "a Bulk Data kick-off needs the header `Prefer: respond-async`",
            ));
        }
        if let Some(accept) = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            && !accepts(accept, "application/fhir+json")
        {
            return Err(Problem::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                "a kick-off answers in application/fhir+json: send `Accept: application/fhir+json`",
            ));
        }
        let url = format!(
            "{base}{}",
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().strip_prefix(BASE_PATH).unwrap_or(p.as_str()))
                .unwrap_or_default()
        );
        let mut parameters: Vec<(String, String)> = request
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        if request.method() == Method::POST {
            parameters.extend(body_parameters(request).await?);
        }
        let mut seen = BTreeSet::new();
        let (mut types, mut since) = (BTreeSet::new(), None);
        for (name, value) in &parameters {
            if !seen.insert(name.clone()) {
                return Err(Problem::invalid(format!(
                    "`{name}` is given more than once"
                )));
            }
            match name.as_str() {
                "_outputFormat" => {
                    if !matches!(
                        value.as_str(),
                        "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                    ) {
                        return Err(Problem::not_supported(format!(
                            "_outputFormat `{value}` is not supported: this server writes application/fhir+ndjson"
                        )));
                    }
                }
                "_since" => {
                    since = Some(parse_instant(value).ok_or_else(|| {
                        Problem::invalid(format!(
                            "_since `{value}` is not a FHIR instant: write it as 2026-03-01T09:30:00Z or 2026-03-01T10:30:00.25+01:00"
                        ))
                    })?);
                }
                "_type" => {
                    for t in value.split(',').map(str::trim) {
                        let kind = Kind::parse(t).ok_or_else(|| {
                            Problem::not_supported(format!(
                                "_type `{t}` is not a type this server exports: it has {}",
                                Kind::ALL.map(Kind::name).join(", ")
                            ))
                        })?;
                        if scope != Scope::System && !kind.of_participant() {
                            return Err(Problem::not_supported(format!(
                                "_type `{t}` is a definition, not in the Patient compartment: ask for it at [base]/$export"
                            )));
                        }
                        types.insert(kind);
                    }
                }
                other => {
                    return Err(Problem::not_supported(format!(
                        "the parameter `{other}` is not supported by this server"
                    )));
                }
            }
        }
        let since_position = match since {
            Some(instant) => self.jobs.since_position(tenant.as_str(), instant).await?,
            None => 0,
        };
        let export = ExportRequest {
            tenant: tenant.as_str().to_owned(),
            scope,
            types,
            at_position: 0,
            since_position,
        };
        match self.jobs.kick_off(&export, &url).await? {
            Kickoff::Accepted(id) => {
                let mut r = fhir_json(StatusCode::ACCEPTED, &Value::Null);
                *r.body_mut() = Default::default();
                r.headers_mut().remove(header::CONTENT_TYPE);
                r.headers_mut().insert(
                    header::CONTENT_LOCATION,
                    header_value(&format!("{base}/$export-status/{id}")),
                );
                Ok(r)
            }
            Kickoff::Busy(n) => {
                let mut r = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    format!(
                        "this tenant has {n} exports under way: wait for one to finish, or delete one"
                    ),
                )
                .response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                Ok(r)
            }
        }
    }

    async fn status(
        &self,
        tenant: &tend_event_store::TenantId,
        base: &str,
        id: &str,
    ) -> Result<Response<Body>, Problem> {
        let id = export_id(id)?;
        let job = self
            .jobs
            .get(tenant.as_str(), id)
            .await?
            .ok_or_else(no_export)?;
        match job.status.as_str() {
            "queued" | "running" => {
                let progress = if job.status == "queued" {
                    "queued".to_owned()
                } else if job.total == 0 {
                    "starting".to_owned()
                } else {
                    format!(
                        "{}% ({} of {} participants read)",
                        i64::from(job.done) * 100 / i64::from(job.total),
                        job.done,
                        job.total
                    )
                };
                let mut r = fhir_json(StatusCode::ACCEPTED, &Value::Null);
                *r.body_mut() = Default::default();
                r.headers_mut().remove(header::CONTENT_TYPE);
                r.headers_mut()
                    .insert("x-progress", header_value(&progress));
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
                Ok(r)
            }
            "complete" => {
                let files = self.jobs.files(id).await?;
                let entry = |f: &crate::jobs::FileRow| {
                    json!({
                        "type": f.resource_type,
                        "url": format!("{base}/$export-file/{id}/{}.ndjson", f.file_no),
                        "count": f.count,
                    })
                };
                let manifest = json!({
                    "transactionTime": transaction_time(job.transaction_time),
                    "request": job.request["url"],
                    "requiresAccessToken": true,
                    "output": files.iter().filter(|f| f.part == "output").map(entry).collect::<Vec<_>>(),
                    "deleted": files.iter().filter(|f| f.part == "deleted").map(entry).collect::<Vec<_>>(),
                    "error": [],
                    "extension": {"https://tend.dev/fhir/log-position": job.position},
                });
                let mut r = with_type(
                    StatusCode::OK,
                    "application/json",
                    manifest.to_string().into(),
                );
                if let Some(expires) = job.expires_at {
                    r.headers_mut().insert(
                        header::EXPIRES,
                        header_value(&expires.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
                    );
                }
                Ok(r)
            }
            "failed" => Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                format!(
                    "the export failed: {}",
                    job.error.as_deref().unwrap_or("no reason was recorded")
                ),
            )),
            "expired" => Err(Problem::not_found(
                "this export's files have expired: kick off a new one",
            )),
            _ => Err(no_export()),
        }
    }
}

/// A request's route, as a low-cardinality attribute (never an id).
fn route_name(path: &str) -> &'static str {
    let rest = path.strip_prefix(BASE_PATH).unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["metadata"] => "metadata",
        [.., last] if last.ends_with("$export") || last.ends_with("%24export") => "export",
        [status, ..] if status.contains("export-status") => "export-status",
        [file, ..] if file.contains("export-file") => "export-file",
        [kind, _] if Kind::parse(kind).is_some() => "read",
        _ => "other",
    }
}

fn no_export() -> Problem {
    Problem::not_found("no such export (deleted, or never kicked off by this tenant)")
}

fn export_id(s: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(s).map_err(|_| no_export())
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The manifest's transaction time, to the microsecond the database keeps,
/// so that `_since` of it finds the export it came from.
fn transaction_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Whether an `Accept` header admits `wanted`.
fn accepts(accept: &str, wanted: &str) -> bool {
    accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or_default().trim();
        media == wanted || media == "*/*" || media == "application/*" || media == "application/json"
    })
}

/// A FHIR instant: a date, a time to the second (a fraction allowed) and a
/// zone (`Z` or an offset), nothing less.
fn parse_instant(s: &str) -> Option<jiff::Timestamp> {
    if !s.is_ascii() {
        return None;
    }
    // A `+` left unescaped in a query arrives as a space.
    let fixed;
    let s = if s.len() > 6 && s.as_bytes()[s.len() - 6] == b' ' {
        fixed = format!("{}+{}", &s[..s.len() - 6], &s[s.len() - 5..]);
        fixed.as_str()
    } else {
        s
    };
    let b = s.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || {
            let tail = &s[s.len() - 6..];
            (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes()[3] == b':'
        });
    if !shape {
        return None;
    }
    s.parse().ok()
}

/// The parameters of a POST kick-off's `Parameters` body.
async fn body_parameters(request: Request<Incoming>) -> Result<Vec<(String, String)>, Problem> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                format!("the body must be at most {MAX_BODY} bytes"),
            )
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(vec![]);
    }
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::invalid(format!("the body is not JSON: {e}")))?;
    if body["resourceType"] != "Parameters" {
        return Err(Problem::invalid(
            "a POST kick-off's body must be a Parameters resource",
        ));
    }
    let mut out = Vec::new();
    for p in body["parameter"].as_array().into_iter().flatten() {
        let name = p["name"]
            .as_str()
            .ok_or_else(|| Problem::invalid("Parameters.parameter.name is missing"))?;
        let value = ["valueString", "valueInstant", "valueCode"]
            .iter()
            .find_map(|k| p[*k].as_str())
            .ok_or_else(|| {
                Problem::invalid(format!(
                    "Parameters.parameter `{name}` needs a valueString, valueInstant or valueCode"
                ))
            })?;
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn capability_statement() -> Value {
    let read = |k: Kind| json!({"type": k.name(), "interaction": [{"code": "read"}]});
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-29",
        "kind": "instance",
        "software": {"name": "Tend", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Tend: self-compassion integration arcs, practice and scores"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "rest": [{
            "mode": "server",
            "security": {"description": "Bearer tokens, as on Tend's gRPC port"},
            "resource": Kind::ALL.map(read).to_vec(),
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "patient-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
                {"name": "group-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"},
            ],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_must_be_whole() {
        assert!(parse_instant("2026-03-01T09:30:00Z").is_some());
        assert!(parse_instant("2026-03-01T10:30:00.25+01:00").is_some());
        // An unescaped `+` in the query, decoded as a space.
        assert_eq!(
            parse_instant("2026-03-01T10:30:00 01:00"),
            parse_instant("2026-03-01T09:30:00Z")
        );
        for bad in [
            "2026-03-01",
            "2026-03-01T09:30Z",
            "2026-03-01T09:30:0\u{1f600}\u{1f600}",
            "\u{e9}026-03-01T09:30:00+01:00",
            "2026-03-01T09:30:00",
            "2026-03-01 09:30:00Z",
            "2026-13-01T09:30:00Z",
            "yesterday",
            "",
        ] {
            assert!(parse_instant(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn transaction_times_round_trip_to_the_microsecond() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-01T09:30:00.123456Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let s = transaction_time(t);
        assert_eq!(s, "2026-03-01T09:30:00.123456Z");
        let back = parse_instant(&s).unwrap();
        assert_eq!(tend_service_kit::instants::to_chrono(back), t);
    }

    #[test]
    fn routes_are_named_without_ids() {
        assert_eq!(route_name("/fhir/metadata"), "metadata");
        assert_eq!(route_name("/fhir/$export"), "export");
        assert_eq!(route_name("/fhir/Group/arc/$export"), "export");
        assert_eq!(route_name("/fhir/$export-status/abc"), "export-status");
        assert_eq!(route_name("/fhir/$export-file/abc/1.ndjson"), "export-file");
        assert_eq!(route_name("/fhir/Task/abc.def"), "read");
        assert_eq!(route_name("/fhir/Nope/abc"), "other");
        assert_eq!(route_name("/elsewhere"), "other");
    }

    #[test]
    fn accept_headers() {
        assert!(accepts("application/fhir+json", "application/fhir+json"));
        assert!(accepts("text/html, */*;q=0.1", "application/fhir+json"));
        assert!(!accepts("text/csv", "application/fhir+json"));
    }
}
