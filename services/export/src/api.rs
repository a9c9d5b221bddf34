//! The gRPC handler.

use std::io::Read;
use std::sync::Arc;

use sqlx::PgPool;
use tend_api::exports::v1 as pb;
use tend_api::exports::v1::export_service_server::{ExportService, ExportServiceServer};
use tend_auth::tenant_of;
use tend_export::{Format, Report};
use tend_privacy::Recipients;
use tend_service_kit::instants;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::Error;

/// Bytes per streamed chunk: well under gRPC's default 4 MiB message limit.
const CHUNK: usize = 1 << 20;

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct ExportApi {
    pool: PgPool,
    recipients: Recipients,
    /// Exports built at once on this server: each reads a snapshot and
    /// folds on a core of its own; more wait their turn.
    running: Arc<Semaphore>,
}

impl ExportApi {
    pub fn new(pool: PgPool, recipients: Recipients) -> Self {
        Self {
            pool,
            recipients,
            running: Arc::new(Semaphore::new(1)),
        }
    }

    pub fn into_server(self) -> ExportServiceServer<Self> {
        ExportServiceServer::new(self)
    }
}

fn invalid(field: &'static str, reason: &str) -> Error {
    Error::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

/// Streams the built files from `dir`, then their digests.
fn stream_files(
    dir: tempfile::TempDir,
    out: std::path::PathBuf,
    report: Report,
    tx: mpsc::Sender<Result<pb::ExportResponse, Status>>,
) {
    let send = |part: pb::export_response::Part| {
        tx.blocking_send(Ok(pb::ExportResponse { part: Some(part) }))
            .is_ok()
    };
    let started = pb::ExportStarted {
        position: report.position,
        as_of: Some(instants::to_pb(report.as_of)),
        pseudonym_key_id: report.pseudonym_key_id.clone(),
    };
    if !send(pb::export_response::Part::Started(started)) {
        return;
    }
    for f in &report.files {
        let result = (|| -> Result<bool, std::io::Error> {
            let mut file = std::fs::File::open(out.join(&f.file))?;
            let mut offset = 0u64;
            loop {
                let mut data = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file.read(&mut data[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 && offset > 0 {
                    return Ok(true);
                }
                data.truncate(filled);
                let chunk = pb::FileChunk {
                    file: f.file.clone(),
                    offset,
                    data,
                };
                if !send(pb::export_response::Part::Chunk(chunk)) {
                    return Ok(false); // the caller went away
                }
                offset += filled as u64;
                if filled < CHUNK {
                    return Ok(true);
                }
            }
        })();
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.blocking_send(Err(Error::Staging(e).into()));
                return;
            }
        }
    }
    let finished = pb::ExportFinished {
        files: report
            .files
            .iter()
            .map(|f| pb::ExportedFile {
                file: f.file.clone(),
                bytes: f.bytes,
                sha256: f.sha256.clone(),
                rows: f.rows,
            })
            .collect(),
    };
    send(pb::export_response::Part::Finished(finished));
    drop(dir);
}

#[tonic::async_trait]
impl ExportService for ExportApi {
    type ExportStream = ReceiverStream<Result<pb::ExportResponse, Status>>;

    #[tracing::instrument(skip_all, fields(rpc = "Export"))]
    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        if r.recipient_id.is_empty() {
            return Err(invalid("recipient_id", "is required: exports are pseudonymous").into());
        }
        let format = match pb::ExportFormat::try_from(r.format) {
            Ok(pb::ExportFormat::Csv) => Format::Csv,
            Ok(pb::ExportFormat::Parquet) => Format::Parquet,
            _ => {
                return Err(invalid(
                    "format",
                    "must be EXPORT_FORMAT_CSV or EXPORT_FORMAT_PARQUET",
                )
                .into());
            }
        };
        if r.since_position != 0 && r.at_position != 0 && r.since_position >= r.at_position {
            return Err(invalid("since_position", "must be below at_position").into());
        }
        let key_id = (!r.pseudonym_key_id.is_empty()).then_some(r.pseudonym_key_id.as_str());
        let pseudonymizer =
            tend_export::pseudonymizer(&self.recipients, tenant.as_str(), &r.recipient_id, key_id)
                .map_err(Error::from)?;
        let request = tend_export::Request {
            tenant: tenant.as_str().to_owned(),
            format,
            at_position: r.at_position,
            since_position: r.since_position,
            shift_dates: r.shift_dates,
            include_retracted: r.include_retracted,
            sd: r.reference_sd.into_iter().collect(),
        };
        let _permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        // Readable by this process's user only, and gone when the stream
        // ends however it ends.
        let dir = tempfile::Builder::new()
            .prefix("tend-export-")
            .tempdir()
            .map_err(Error::Staging)?;
        let out = dir.path().join("export");
        let report = tend_export::export(&self.pool, pseudonymizer, &request, &out)
            .await
            .map_err(Error::from)?;
        tracing::info!(
            position = report.position,
            participants = report.participants,
            events = report.events,
            "export built"
        );
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || stream_files(dir, out, report, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
