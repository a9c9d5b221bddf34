//! Reading one stream, or the global log by position.

use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::Instrument;

use crate::{
    Direction, Error, EventStore, Filter, LogPage, Metadata, MovedStreams, RecordedEvent, StreamId,
    StreamSlice, TenantId,
};

/// The most positions one log read scans, matched or not. It bounds the
/// work of a filtered read over a long stretch of other events.
const SCAN_WINDOW: u64 = 20_000;

impl EventStore {
    /// Up to `max` events of one stream, from `from` (inclusive; `None`
    /// means the start going forwards and the end going backwards).
    pub async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        direction: Direction,
        from: Option<u64>,
        max: usize,
    ) -> Result<StreamSlice, Error> {
        let max = max.clamp(1, 10_000) as i64;
        // One statement, so the version and the events share a snapshot.
        let rows = match direction {
            Direction::Forwards => {
                sqlx::query(
                    "WITH head AS (SELECT max(stream_version) AS v FROM events
                                   WHERE tenant_id = $1 AND stream_id = $2)
                     SELECT head.v, e.* FROM head LEFT JOIN LATERAL (
                         SELECT e.position, e.tenant_id, e.stream_id, e.stream_version, e.event_id,
                                e.event_type, e.schema_version, e.payload, e.metadata, e.recorded_at
                         FROM events e
                         WHERE e.tenant_id = $1 AND e.stream_id = $2 AND e.stream_version >= $3
                         ORDER BY e.stream_version LIMIT $4) e ON true
                     ORDER BY e.stream_version",
                )
                .bind(tenant.as_str())
                .bind(stream.as_str())
                .bind(from.unwrap_or(0).min(i64::MAX as u64) as i64)
                .bind(max)
                .fetch_all(self.pool())
                .instrument(tend_telemetry::db_span("SELECT events", "SELECT", "events"))
                .await?
            }
            Direction::Backwards => {
                sqlx::query(
                    "WITH head AS (SELECT max(stream_version) AS v FROM events
                                   WHERE tenant_id = $1 AND stream_id = $2)
                     SELECT head.v, e.* FROM head LEFT JOIN LATERAL (
                         SELECT e.position, e.tenant_id, e.stream_id, e.stream_version, e.event_id,
                                e.event_type, e.schema_version, e.payload, e.metadata, e.recorded_at
                         FROM events e
                         WHERE e.tenant_id = $1 AND e.stream_id = $2 AND e.stream_version <= $3
                         ORDER BY e.stream_version DESC LIMIT $4) e ON true
                     ORDER BY e.stream_version DESC",
                )
                .bind(tenant.as_str())
                .bind(stream.as_str())
                .bind(from.map_or(i64::MAX, |v| v.min(i64::MAX as u64) as i64))
                .bind(max)
                .fetch_all(self.pool())
                .instrument(tend_telemetry::db_span("SELECT events", "SELECT", "events"))
                .await?
            }
        };
        let stream_version = match rows.first() {
            Some(row) => row.try_get::<Option<i64>, _>(0)?.map(|v| v as u64),
            None => None,
        };
        let events = rows
            .iter()
            .filter(|row| matches!(row.try_get::<Option<i64>, _>(1), Ok(Some(_))))
            .map(|row| event_from_row(row, 1))
            .collect::<Result<Vec<_>, _>>()?;
        let end_of_stream = match (direction, events.last(), stream_version) {
            (_, None, _) | (_, _, None) => true,
            (_, _, _) if (events.len() as i64) < max => true,
            (Direction::Forwards, Some(last), Some(v)) => last.stream_version >= v,
            (Direction::Backwards, Some(last), _) => last.stream_version == 0,
        };
        Ok(StreamSlice {
            events,
            stream_version,
            end_of_stream,
        })
    }

    /// Up to `max` events of the global log after position `after` that
    /// pass `filter`, in position order.
    pub async fn read_log(
        &self,
        filter: &Filter,
        after: u64,
        max: usize,
    ) -> Result<LogPage, Error> {
        let max = max.clamp(1, 10_000);
        let upto = after.saturating_add(SCAN_WINDOW).min(i64::MAX as u64);
        let rows = sqlx::query(
            "WITH head AS (SELECT coalesce(max(position), 0) AS position FROM events)
             SELECT head.position, e.* FROM head LEFT JOIN LATERAL (
                 SELECT e.position, e.tenant_id, e.stream_id, e.stream_version, e.event_id,
                        e.event_type, e.schema_version, e.payload, e.metadata, e.recorded_at
                 FROM events e
                 WHERE e.position > $1 AND e.position <= LEAST($2, head.position)
                   AND ($3::text IS NULL OR e.tenant_id = $3)
                   AND (cardinality($4::text[]) = 0 OR e.category = ANY($4))
                   AND (cardinality($5::text[]) = 0 OR e.event_type = ANY($5))
                 ORDER BY e.position LIMIT $6) e ON true
             ORDER BY e.position",
        )
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(upto as i64)
        .bind(filter.tenant.as_ref().map(TenantId::as_str))
        .bind(&filter.categories)
        .bind(&filter.event_types)
        .bind(max as i64)
        .fetch_all(self.pool())
        .instrument(tend_telemetry::db_span("SELECT events", "SELECT", "events"))
        .await?;
        let head = match rows.first() {
            Some(row) => row.try_get::<i64, _>(0)? as u64,
            None => after,
        };
        let events = rows
            .iter()
            .filter(|row| matches!(row.try_get::<Option<i64>, _>(1), Ok(Some(_))))
            .map(|row| event_from_row(row, 1))
            .collect::<Result<Vec<_>, _>>()?;
        let scanned_through = match events.last() {
            Some(last) if events.len() == max => last.position,
            _ => head.min(upto).max(after),
        };
        Ok(LogPage {
            events,
            scanned_through,
        })
    }
}

/// The most positions one [`EventStore::streams_moved`] call counts: a
/// stretch the size of a few minutes of heavy writing, so that a reader far
/// behind catches up in bounded steps.
const MOVED_WINDOW: u64 = 100_000;

impl EventStore {
    /// The streams of `categories` that moved after position `after`, up
    /// to `through` (and no further than the log's head, nor more than a
    /// window of positions at once), with the newest version each reached.
    /// As with [`EventStore::read_log`], every position up to the head is
    /// committed, so nothing counted here can be joined later by an event
    /// at a lower position.
    pub async fn streams_moved(
        &self,
        categories: &[String],
        after: u64,
        through: u64,
    ) -> Result<MovedStreams, Error> {
        let upto = through
            .min(after.saturating_add(MOVED_WINDOW))
            .min(i64::MAX as u64);
        if upto <= after {
            return Ok(MovedStreams {
                streams: vec![],
                scanned_through: after,
            });
        }
        let rows = sqlx::query(
            "WITH bound AS (SELECT LEAST($2, coalesce(max(position), 0)) AS upto FROM events)
             SELECT bound.upto, m.tenant_id, m.stream_id, m.version FROM bound LEFT JOIN LATERAL (
                 SELECT e.tenant_id, e.stream_id, max(e.stream_version) AS version
                 FROM events e
                 WHERE e.position > $1 AND e.position <= bound.upto
                   AND e.category = ANY($3)
                 GROUP BY e.tenant_id, e.stream_id) m ON true",
        )
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(upto as i64)
        .bind(categories)
        .fetch_all(self.pool())
        .instrument(tend_telemetry::db_span("SELECT events", "SELECT", "events"))
        .await?;
        let scanned_through = match rows.first() {
            Some(row) => (row.try_get::<i64, _>(0)? as u64).max(after),
            None => after,
        };
        let mut streams = Vec::with_capacity(rows.len());
        for row in &rows {
            let (Some(tenant), Some(stream), Some(version)) = (
                row.try_get::<Option<String>, _>(1)?,
                row.try_get::<Option<String>, _>(2)?,
                row.try_get::<Option<i64>, _>(3)?,
            ) else {
                continue;
            };
            streams.push((
                TenantId::new(tenant)?,
                StreamId::new(stream)?,
                version as u64,
            ));
        }
        Ok(MovedStreams {
            streams,
            scanned_through,
        })
    }
}

/// The most stream ids one [`EventStore::list_streams`] call returns.
pub(crate) const MAX_LISTED_STREAMS: usize = 10_000;

impl EventStore {
    /// The event with this id in the tenant, if any: ids are unique per
    /// tenant, so an id chosen as an entity's id finds its stream.
    pub async fn find_event(
        &self,
        tenant: &TenantId,
        event_id: uuid::Uuid,
    ) -> Result<Option<RecordedEvent>, Error> {
        let row = sqlx::query(
            "SELECT position, tenant_id, stream_id, stream_version, event_id, event_type,
                    schema_version, payload, metadata, recorded_at
             FROM events WHERE tenant_id = $1 AND event_id = $2",
        )
        .bind(tenant.as_str())
        .bind(event_id)
        .fetch_optional(self.pool())
        .instrument(tend_telemetry::db_span("SELECT events", "SELECT", "events"))
        .await?;
        row.map(|row| event_from_row(&row, 0)).transpose()
    }

    /// Every stream of `category` in the tenant, in id order, at most
    /// [`MAX_LISTED_STREAMS`].
    pub async fn list_streams(
        &self,
        tenant: &TenantId,
        category: &str,
    ) -> Result<Vec<StreamId>, Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT stream_id FROM events
             WHERE tenant_id = $1 AND category = $2 AND stream_version = 0
             ORDER BY stream_id LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(category)
        .bind(MAX_LISTED_STREAMS as i64)
        .fetch_all(self.pool())
        .instrument(tend_telemetry::db_span("SELECT events", "SELECT", "events"))
        .await?;
        ids.into_iter()
            .map(|id| {
                StreamId::new(id).map_err(|e| Error::Corrupt {
                    position: 0,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Every event of one stream, reading page by page; with the stream's
    /// version (`None` when it has no events).
    pub async fn read_whole_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<(Vec<RecordedEvent>, Option<u64>), Error> {
        self.read_stream_after(tenant, stream, None).await
    }

    /// The stream's events after version `after` (all of them for `None`),
    /// and its version: what a state kept at `after` is missing.
    pub async fn read_stream_after(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        after: Option<u64>,
    ) -> Result<(Vec<RecordedEvent>, Option<u64>), Error> {
        const PAGE: usize = 2000;
        let mut events: Vec<RecordedEvent> = Vec::new();
        loop {
            let from = match events.last() {
                Some(e) => Some(e.stream_version + 1),
                None => after.map(|v| v + 1),
            };
            let slice = self
                .read_stream(tenant, stream, Direction::Forwards, from, PAGE)
                .await?;
            let version = slice.stream_version;
            let end = slice.end_of_stream;
            events.extend(slice.events);
            if end {
                // Versions are dense, so the last event read is the version
                // the caller may append after.
                let version = events.last().map(|e| e.stream_version).or(version);
                return Ok((events, version));
            }
        }
    }
}

/// Events per stream that [`EventStore::read_streams_after`] reads in its
/// one statement; a stream with more is read on page by page.
const MANY_PAGE: i64 = 500;

impl EventStore {
    /// [`EventStore::read_stream_after`] for many streams in one round trip:
    /// for each `(tenant, stream, after)`, in the same order, the stream's
    /// events after `after` and its version. A background worker that
    /// refreshes many kept states at once reads them together rather than
    /// a statement per stream.
    pub async fn read_streams_after(
        &self,
        streams: &[(TenantId, StreamId, Option<u64>)],
    ) -> Result<Vec<(Vec<RecordedEvent>, Option<u64>)>, Error> {
        let mut out: Vec<(Vec<RecordedEvent>, Option<u64>)> =
            vec![(Vec::new(), None); streams.len()];
        if streams.is_empty() {
            return Ok(out);
        }
        let tenants: Vec<&str> = streams.iter().map(|(t, _, _)| t.as_str()).collect();
        let ids: Vec<&str> = streams.iter().map(|(_, s, _)| s.as_str()).collect();
        let afters: Vec<i64> = streams
            .iter()
            .map(|(_, _, a)| a.map_or(-1, |v| v.min(i64::MAX as u64) as i64))
            .collect();
        // One statement, so each stream's version and events share a
        // snapshot, as in `read_stream`.
        let rows = sqlx::query(
            "SELECT k.i, h.v, e.* FROM unnest($1::text[], $2::text[], $3::bigint[])
                 WITH ORDINALITY AS k(t, s, a, i)
             CROSS JOIN LATERAL (SELECT max(stream_version) AS v FROM events
                                 WHERE tenant_id = k.t AND stream_id = k.s) h
             LEFT JOIN LATERAL (
                 SELECT e.position, e.tenant_id, e.stream_id, e.stream_version, e.event_id,
                        e.event_type, e.schema_version, e.payload, e.metadata, e.recorded_at
                 FROM events e
                 WHERE e.tenant_id = k.t AND e.stream_id = k.s AND e.stream_version > k.a
                 ORDER BY e.stream_version LIMIT $4) e ON true
             ORDER BY k.i, e.stream_version",
        )
        .bind(&tenants)
        .bind(&ids)
        .bind(&afters)
        .bind(MANY_PAGE)
        .fetch_all(self.pool())
        .instrument(tend_telemetry::db_span("SELECT events", "SELECT", "events"))
        .await?;
        for row in &rows {
            let i = row.try_get::<i64, _>(0)? as usize - 1;
            let Some(slot) = out.get_mut(i) else { continue };
            slot.1 = row.try_get::<Option<i64>, _>(1)?.map(|v| v as u64);
            if matches!(row.try_get::<Option<i64>, _>(2), Ok(Some(_))) {
                slot.0.push(event_from_row(row, 2)?);
            }
        }
        for (i, (events, version)) in out.iter_mut().enumerate() {
            if events.len() as i64 == MANY_PAGE
                && let Some(last) = events.last().map(|e| e.stream_version)
                && version.is_some_and(|v| v > last)
            {
                let (tenant, stream, _) = &streams[i];
                let (rest, v) = self.read_stream_after(tenant, stream, Some(last)).await?;
                events.extend(rest);
                *version = v;
            }
            // Versions are dense: the last event read is the version the
            // caller may append after.
            if let Some(last) = events.last() {
                *version = Some(last.stream_version);
            }
        }
        Ok(out)
    }
}

/// Decodes the event columns of `row`, starting at column `at`.
fn event_from_row(row: &PgRow, at: usize) -> Result<RecordedEvent, Error> {
    let position = row.try_get::<i64, _>(at)? as u64;
    let corrupt = |reason: String| Error::Corrupt { position, reason };
    let tenant =
        TenantId::new(row.try_get::<String, _>(at + 1)?).map_err(|e| corrupt(e.to_string()))?;
    let stream_id =
        StreamId::new(row.try_get::<String, _>(at + 2)?).map_err(|e| corrupt(e.to_string()))?;
    let metadata: Option<serde_json::Value> = row.try_get(at + 8)?;
    let metadata: Metadata = match metadata {
        Some(m) => serde_json::from_value(m).map_err(|e| corrupt(format!("metadata: {e}")))?,
        None => Metadata::default(),
    };
    Ok(RecordedEvent {
        position,
        tenant,
        stream_id,
        stream_version: row.try_get::<i64, _>(at + 3)? as u64,
        id: row.try_get(at + 4)?,
        event_type: row.try_get(at + 5)?,
        schema_version: row.try_get::<i32, _>(at + 6)? as u32,
        payload: row.try_get(at + 7)?,
        metadata,
        recorded_at: row.try_get(at + 9)?,
    })
}
