//! The audit log as CSV or JSON Lines, streamed in constant memory: what `flagstore audit
//! --format csv|jsonl --limit 0` prints for the same filters.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Filters;
use crate::audit::{AuditQuery, COLUMNS};
use crate::serve::web::{PageQuery, Visit, as_visitor, bad_query, refused};
use crate::serve::{Refusal, Shared};
use crate::store::Store;
use crate::token::Role;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/ui/audit/export", get(export))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ExportFormat {
    format: String,
}

/// Bytes of an export sent at a time, and chunks waiting for a slow client at most: an
/// export of any size streams in constant memory.
const EXPORT_CHUNK: usize = 64 * 1024;
const EXPORT_CHUNKS_QUEUED: usize = 16;

/// How long an export waits for its client to take the next chunk before it gives up and
/// frees its reader: a download nobody reads must not hold a slot for ever.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// The export's body as it is written: chunks to the response stream. An error from the
/// client side (it went away) stops the scan.
struct ChunkWriter {
    buffer: Vec<u8>,
    chunks: mpsc::Sender<std::io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send(&mut self, chunk: std::io::Result<Bytes>) -> std::io::Result<()> {
        let sent = match tokio::runtime::Handle::try_current() {
            // A reader's blocking thread, which may wait on the runtime.
            Ok(runtime) => runtime.block_on(async {
                tokio::time::timeout(EXPORT_STALL, self.chunks.send(chunk)).await
            }),
            // The writer's thread, for a store in memory, which has no readers.
            Err(_) => Ok(self.chunks.blocking_send(chunk)),
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client left",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", EXPORT_STALL.as_secs()),
            )),
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.send(Ok(chunk))
    }
}

/// Writes every row `query` selects to `out` as CSV (with its header) or JSON lines.
fn write_export(
    store: &Store,
    query: &AuditQuery,
    csv: bool,
    out: &mut ChunkWriter,
) -> Result<(), Refusal> {
    let failed = |e: std::io::Error| Refusal::Failed(e.to_string());
    if csv {
        let mut writer = csv::Writer::from_writer(&mut *out);
        let csv_failed = |e: csv::Error| Refusal::Failed(e.to_string());
        writer.write_record(COLUMNS).map_err(csv_failed)?;
        store.query_audit(query, |row| {
            writer.write_record(row.csv_record()).map_err(csv_failed)
        })?;
        writer.flush().map_err(failed)?;
    } else {
        store.query_audit(query, |row| {
            serde_json::to_writer(&mut *out, &row).map_err(|e| Refusal::Failed(e.to_string()))?;
            std::io::Write::write_all(out, b"\n").map_err(failed)
        })?;
    }
    std::io::Write::flush(out).map_err(failed)
}

/// Every row the filters select, newest first, as `flagstore audit --format csv|jsonl
/// --limit 0` prints them, streamed as it is read.
async fn export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    filters: PageQuery<Filters>,
    format: PageQuery<ExportFormat>,
) -> Response {
    let (filters, format) = match (filters, format) {
        (Ok(filters), Ok(format)) => (filters.0, format.0.format),
        (Err(rejection), _) | (_, Err(rejection)) => return bad_query(&rejection),
    };
    let (csv, content_type, file) = match format.as_str() {
        "csv" => (true, "text/csv; charset=utf-8", "audit.csv"),
        "jsonl" => (false, "application/x-ndjson", "audit.jsonl"),
        other => {
            return refused(
                Refusal::BadRequest(format!("export format {other:?} is neither csv nor jsonl")),
                None,
            );
        }
    };
    let query = match filters.query() {
        Ok(query) => query,
        Err(refusal) => return refused(refusal, None),
    };
    let (chunks, mut received) = mpsc::channel(EXPORT_CHUNKS_QUEUED);
    // The scan runs on a reader while the response streams; its first chunk (empty) says the
    // visitor was let in, so that a refusal is still answered with its own status.
    let scan = tokio::spawn(async move {
        as_visitor(
            &shared,
            &headers,
            Role::Viewer,
            Visit::Export,
            move |store, _| {
                let mut out = ChunkWriter {
                    buffer: Vec::with_capacity(EXPORT_CHUNK),
                    chunks,
                };
                out.send(Ok(Bytes::new()))
                    .map_err(|e| Refusal::Failed(e.to_string()))?;
                if let Err(refusal) = write_export(store, &query, csv, &mut out) {
                    // The status is sent already: the body ends in an error, so the client sees
                    // a failed download rather than a short file.
                    // Without waiting: a client that stopped reading has had its deadline.
                    let error = std::io::Error::other(format!("{refusal:?}"));
                    let _ = out.chunks.try_send(Err(error));
                }
                Ok(())
            },
        )
        .await
    });
    if received.recv().await.is_none() {
        return match scan.await {
            Ok(Err(response)) => response,
            _ => refused(
                Refusal::Failed("the export stopped before it began".to_string()),
                None,
            ),
        };
    }
    let body = futures_util::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|chunk| (chunk, received))
    });
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
