//! The `couchdb` source: a logical dump over CouchDB's HTTP API, loaded back
//! through the pending load (docs/ARCHITECTURE.md, "The pending load").
//!
//! For each database: every change (`_changes?style=all_docs`, in pages)
//! names each document's leaf revisions, live, deleted and conflicting;
//! `_bulk_get?revs=true` returns them with their revision paths, one NDJSON
//! line per leaf revision, which is exactly what `_bulk_docs` with
//! `new_edits:false` takes back. Attachments of up to
//! [`INLINE_ATTACHMENTS_MAX`] per revision are inline in the line (a second
//! `_bulk_get` with `attachments=true`); bigger ones are tar entries of their
//! own, streamed both ways (`attachments.rs`). Loading the same lines twice
//! changes nothing, so an interrupted load is simply redone.

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use crate::https::{Client, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::kind::SourceKind;
use super::seam::{append_stream, Dump, Logical, SourceCtx, SourceReport, Spool, READ_BUFFER};
use crate::artifact::safe_file_name;
use crate::error::IoContext;
use crate::json_split::Splitter;
use crate::manifest::Manifest;
use crate::progress::{is_cancelled, Cancel};
use crate::source::load::LoadState;
use crate::{Error, Result};

mod attachments;
mod conn;
mod md5;

pub use attachments::{ATTACHMENTS_DIR, FILE_FIELD};
pub use conn::{CouchConn, DEFAULT_URL, DUMP_DIR};

pub const DOCS_FILE: &str = "docs.ndjson";
pub const SECURITY_FILE: &str = "security.json";
/// CouchDB's user database (the default `authentication_db`).
const USERS_DB: &str = "_users";
/// Changes read per `_changes` request. The reply (ids and revisions) is
/// held whole; the documents themselves stream one at a time.
pub const PAGE: usize = 1000;
/// Loading: at most this many documents, or this many bytes, per
/// `_bulk_docs` request (a bigger single document goes alone).
pub const LOAD_BATCH_DOCS: usize = 500;
pub const LOAD_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// A leaf revision whose attachments hold at most this many bytes in all
/// keeps them inline in its line (base64); any other has each of them as a
/// file of its own, streamed (`attachments.rs`). This bounds what one
/// document holds in memory, whatever the size of its attachments.
pub const INLINE_ATTACHMENTS_MAX: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
struct DbInfo {
    doc_count: u64,
    /// PouchDB-based servers leave it out.
    doc_del_count: Option<u64>,
    update_seq: Value,
}

#[derive(Debug, Deserialize)]
struct Changes {
    results: Vec<Change>,
    last_seq: Value,
}

#[derive(Debug, Deserialize)]
struct Change {
    id: String,
    changes: Vec<Rev>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Rev {
    rev: String,
}

/// One database in `source_meta.databases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpedDb {
    pub name: String,
    /// Folder under `couchdb/` in the tar.
    pub dir: String,
    /// Lines in `docs.ndjson`: leaf revisions, live or deleted.
    pub revisions: u64,
    pub deleted_revisions: u64,
    /// The server's counts after the dump; a load is checked against them
    /// when `exact` (nothing was written while the dump ran).
    pub doc_count: u64,
    pub doc_del_count: Option<u64>,
    pub exact: bool,
}

/// The manifest's `source_meta` for a CouchDB dump, written and read as this type.
#[derive(Debug, Serialize, Deserialize)]
struct CouchMeta {
    #[serde(default)]
    server: CouchServer,
    databases: Vec<DumpedDb>,
}

/// What answered the dump: CouchDB's or PouchDB Server's welcome.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CouchServer {
    couchdb: Option<Value>,
    version: Option<Value>,
    vendor: Option<Value>,
}

pub type CouchSource = Logical<CouchConn>;

fn seq_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn gone(conn: &CouchConn, db: &str) -> Error {
    Error::Source(format!(
        "{}: database {db:?} disappeared during the dump (deleted?); nothing was committed",
        conn.describe()
    ))
}

/// A request about `db` failed without an answer (a timeout, a dropped
/// connection): a server may do that to a request on a database deleted
/// under it. Say so when the database is gone; else the error as it was.
async fn gone_or(conn: &CouchConn, client: &Client, db: &str, what: &str, e: Error) -> Error {
    match conn.get_json::<Value>(client, &[db], &[], what).await {
        Ok(None) => gone(conn, db),
        _ => e,
    }
}

/// What the first, attachment-less `_bulk_get` of a page says to do with
/// a leaf revision.
enum Attachments {
    /// None: the line is written as it came.
    None,
    /// At most [`INLINE_ATTACHMENTS_MAX`] bytes in all: fetched again with
    /// them inline (base64), as every attachment was before files.
    Inline,
    /// More: each attachment becomes a file of its own.
    Files,
}

fn attachments_of(doc: &Value) -> Attachments {
    match doc.get("_attachments").and_then(Value::as_object) {
        Some(stubs) if !stubs.is_empty() => {
            let total = stubs.values().fold(0u64, |sum, s| {
                sum.saturating_add(s.get("length").and_then(Value::as_u64).unwrap_or(u64::MAX))
            });
            if total <= INLINE_ATTACHMENTS_MAX {
                Attachments::Inline
            } else {
                Attachments::Files
            }
        }
        _ => Attachments::None,
    }
}

/// One database's `docs.ndjson` being written, with its counts.
struct Lines<'a> {
    out: BufWriter<&'a fs::File>,
    spool: &'a Spool,
    revisions: u64,
    deleted: u64,
}

impl Lines<'_> {
    fn write(&mut self, doc: &Value, ctx: &SourceCtx) -> Result<()> {
        if doc.get("_deleted") == Some(&Value::Bool(true)) {
            self.deleted += 1;
        }
        self.revisions += 1;
        serde_json::to_writer(&mut self.out, doc)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|e| self.spool.error(e))?;
        ctx.progress.add_entry();
        Ok(())
    }
}

impl CouchSource {
    /// Streams every leaf revision of `db` into `spool`, one JSON per line,
    /// and every attachment too big to be inline into `tar`.
    #[allow(clippy::too_many_arguments)]
    fn dump_db<W: Write>(
        &self,
        rt: &Handle,
        client: &Client,
        (db, dir): (&str, &str),
        spool: &Spool,
        tar: &mut tar::Builder<W>,
        report: &mut SourceReport,
        ctx: &SourceCtx,
    ) -> Result<DumpedDb> {
        let mut lines = Lines {
            out: BufWriter::with_capacity(READ_BUFFER, spool.file()),
            spool,
            revisions: 0,
            deleted: 0,
        };
        let conn = &self.conn;
        let what = format!("reading database {db:?}");
        let info = || async {
            conn.get_json::<DbInfo>(client, &[db], &[], &what)
                .await?
                .ok_or_else(|| gone(conn, db))
        };
        let before = rt.block_on(info())?;
        let mut since = "0".to_string();
        loop {
            if is_cancelled(&ctx.cancel) {
                return Err(Error::Cancelled);
            }
            let limit = PAGE.to_string();
            let query = [("style", "all_docs"), ("limit", &limit), ("since", &since)];
            let page: Changes = rt
                .block_on(conn.get_json(client, &[db, "_changes"], &query, &what))?
                .ok_or_else(|| gone(conn, db))?;
            let n = page.results.len();
            tracing::debug!(database = %db, since = %since, changes = n, "read a page of changes");
            let wanted: Vec<Value> = page
                .results
                .iter()
                .flat_map(|c| {
                    c.changes
                        .iter()
                        .map(|r| serde_json::json!({ "id": c.id, "rev": r.rev }))
                })
                .collect();
            // Stubs first: what has no attachments is written at once.
            let (mut inline, mut files) = (Vec::new(), Vec::new());
            rt.block_on(self.bulk_get(client, db, &wanted, false, ctx, &mut |doc| {
                match attachments_of(&doc) {
                    Attachments::None => lines.write(&doc, ctx)?,
                    Attachments::Inline => inline.push(serde_json::json!({
                        "id": doc["_id"], "rev": doc["_rev"]
                    })),
                    Attachments::Files => files.push((
                        doc["_id"].as_str().unwrap_or_default().to_string(),
                        doc["_rev"].as_str().unwrap_or_default().to_string(),
                    )),
                }
                Ok(())
            }))?;
            rt.block_on(self.bulk_get(client, db, &inline, true, ctx, &mut |doc| {
                lines.write(&doc, ctx)
            }))?;
            for (id, rev) in &files {
                if is_cancelled(&ctx.cancel) {
                    return Err(Error::Cancelled);
                }
                let doc = attachments::dump_doc(
                    conn,
                    rt,
                    client,
                    (db, dir),
                    (id, rev),
                    tar,
                    report,
                    (&ctx.progress, &ctx.cancel),
                )?;
                // A leaf that vanished was replaced by a newer revision,
                // which a later page of changes brings.
                if let Some(doc) = doc {
                    lines.write(&doc, ctx)?;
                }
            }
            since = seq_text(&page.last_seq);
            if n < PAGE {
                break;
            }
        }
        let after = rt.block_on(info())?;
        // A database deleted and created again under the same name starts
        // its sequence anew: what was read so far belongs to another one.
        if let (Some(b), Some(a)) = (
            seq_number(&before.update_seq),
            seq_number(&after.update_seq),
        ) {
            if a < b {
                return Err(gone(conn, db));
            }
        }
        lines.out.flush().map_err(|e| spool.error(e))?;
        let exact = before.update_seq == after.update_seq;
        Ok(DumpedDb {
            name: db.to_string(),
            dir: dir.to_string(),
            revisions: lines.revisions,
            deleted_revisions: lines.deleted,
            doc_count: after.doc_count,
            doc_del_count: after.doc_del_count,
            exact,
        })
    }

    /// `_bulk_get` of `wanted` (`{id, rev}`s) with revision paths, and with
    /// attachments inline if `inline`, else as stubs carrying their
    /// encoding; `emit` gets each revision found, one at a time as the
    /// reply streams. A leaf that vanished is left out.
    async fn bulk_get(
        &self,
        client: &Client,
        db: &str,
        wanted: &[Value],
        inline: bool,
        ctx: &SourceCtx,
        emit: &mut dyn FnMut(Value) -> Result<()>,
    ) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let conn = &self.conn;
        let what = format!("reading database {db:?}");
        let query: &[(&str, &str)] = if inline {
            &[("revs", "true"), ("attachments", "true")]
        } else {
            &[("revs", "true"), ("att_encoding_info", "true")]
        };
        let req = conn
            .request(client, Method::POST, &[db, "_bulk_get"], query)
            .json(&serde_json::json!({ "docs": wanted }));
        let mut resp = match conn.send(req, &what).await {
            Ok(Ok(r)) => r,
            Ok(Err((StatusCode::NOT_FOUND, _))) => return Err(gone(conn, db)),
            Ok(Err((s, body))) => return Err(conn.status_error(&what, s, &body)),
            Err(e) => return Err(gone_or(conn, client, db, &what, e).await),
        };
        // {"results":[{"id":..,"docs":[{"ok":DOC}|{"error":..}]}]}:
        // each {"ok":..} opens inside four containers.
        let mut split = Splitter::new(4);
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(gone_or(conn, client, db, &what, conn.error(&what, e)).await),
            };
            split.feed(&chunk, &mut |obj| {
                let v: Value = serde_json::from_slice(obj)
                    .map_err(|e| conn.error(&what, format!("bad document: {e}")))?;
                match v {
                    Value::Object(mut m) => match m.remove("ok") {
                        Some(doc) => emit(doc),
                        None => Ok(()),
                    },
                    _ => Ok(()),
                }
            })?;
            ctx.progress.add_bytes(chunk.len() as u64);
        }
        if !split.is_complete() {
            return Err(conn.error(&what, "the reply of _bulk_get ended early"));
        }
        Ok(())
    }
}

/// The counter in a sequence: a number (PouchDB, CouchDB 1) or the number
/// before the `-` of CouchDB 2+'s opaque strings.
fn seq_number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.split('-').next()?.parse().ok(),
        _ => None,
    }
}

impl Dump for CouchConn {
    const KIND: SourceKind = SourceKind::CouchDb;

    fn dump<W: Write>(
        this: &CouchSource,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        let rt = Handle::current();
        let conn = &this.conn;
        let client = conn.client()?;
        let welcome: Value = rt
            .block_on(conn.get_json(&client, &[], &[], "connecting"))?
            .unwrap_or_default();
        let existing: Vec<String> = rt
            .block_on(conn.get_json(&client, &["_all_dbs"], &[], "listing databases"))?
            .unwrap_or_default();
        let names = this
            .databases
            .select(&existing)
            .map_err(|m| Error::Source(format!("{}: {m}", conn.describe())))?;
        let mut report = SourceReport::default();
        let mut dumped = Vec::new();
        for db in &names {
            let spool = Spool::new(&this.spool_dir, format!("database {db:?}"))?;
            let dir = safe_file_name(db);
            let d = this.dump_db(&rt, &client, (db, &dir), &spool, tar, &mut report, ctx)?;
            let security: Value = rt
                .block_on(conn.get_json(&client, &[db, "_security"], &[], "reading _security"))?
                .ok_or_else(|| gone(conn, db))?;
            let security = serde_json::to_vec_pretty(&security).expect("JSON serializes");
            append_stream(
                tar,
                &mut report,
                &format!("{DUMP_DIR}/{}/{SECURITY_FILE}", d.dir),
                security.len() as u64,
                security.as_slice(),
            )?;
            let size = spool.append_to(
                tar,
                &mut report,
                &format!("{DUMP_DIR}/{}/{DOCS_FILE}", d.dir),
            )?;
            if !d.exact {
                report.warn(format!(
                    "database {db:?} was written to during the dump; it holds every change up to its last page, not one moment"
                ));
            }
            info!(database = %db, revisions = d.revisions, doc_count = d.doc_count, size, "database dumped");
            dumped.push(d);
        }
        let meta = CouchMeta {
            server: CouchServer {
                couchdb: welcome
                    .get("couchdb")
                    .or(welcome.get("express-pouchdb"))
                    .cloned(),
                version: welcome.get("version").cloned(),
                vendor: welcome.get("vendor").cloned(),
            },
            databases: dumped,
        };
        Ok(report.with_meta(&meta))
    }
}

/// Whether CouchDB answers, so a load can start.
pub async fn ready(conn: &CouchConn) -> Result<()> {
    let client = conn.client()?;
    conn.get_json::<Value>(&client, &[], &[], "connecting")
        .await
        .map(drop)
}

/// Loads a staged dump (`dir` holds `couchdb/…`): creates each database,
/// restores `_security`, posts the revisions with `new_edits:false` in
/// bounded batches, and checks the document counts.
pub async fn load(conn: &CouchConn, dir: &Path, m: &Manifest, cancel: &Cancel) -> Result<()> {
    let (meta, mut state): (CouchMeta, LoadState) = super::load::resume(dir, m)?;
    let client = conn.client()?;
    for db in super::load::to_load(&state, m, &meta.databases, |d| (&d.name, &d.dir))? {
        let what = format!("loading database {:?}", db.name);
        let folder = dir.join(DUMP_DIR).join(&db.dir);
        let load = DbLoad {
            conn,
            client: &client,
            db,
            folder: &folder,
            what: &what,
        };
        load.create().await?;
        let (loaded, with_files_sent) = load.docs(&m.id, cancel).await?;
        let info = load.check_counts().await?;
        state.finish(dir, &db.name)?;
        info!(database = %db.name, revisions = loaded, with_attachment_files = with_files_sent,
            doc_count = info.doc_count, peak_rss_mib = crate::progress::peak_rss_mib().unwrap_or(0),
            "database loaded");
    }
    Ok(())
}

/// One database of a staged dump being loaded.
struct DbLoad<'a> {
    conn: &'a CouchConn,
    client: &'a Client,
    db: &'a DumpedDb,
    /// `couchdb/<dir>` in the staged dump.
    folder: &'a Path,
    /// `loading database "x"`, for errors.
    what: &'a str,
}

impl DbLoad<'_> {
    /// Creates the database (an existing one is fine) and restores its
    /// `_security` object.
    async fn create(&self) -> Result<()> {
        let (conn, client, db, folder, what) =
            (self.conn, self.client, self.db, self.folder, self.what);
        let create = conn.request(client, Method::PUT, &[&db.name], &[]);
        match conn.send(create, what).await? {
            Ok(_) | Err((StatusCode::PRECONDITION_FAILED, _)) => {}
            Err((s, body)) => return Err(conn.status_error(what, s, &body)),
        }
        let security_path = folder.join(SECURITY_FILE);
        let security = fs::read(&security_path).ctx("reading", &security_path)?;
        let put = conn
            .request(client, Method::PUT, &[&db.name, "_security"], &[])
            .header("Content-Type", "application/json")
            .body(security.clone());
        match conn.send(put, what).await? {
            Ok(_) => {}
            // CouchDB 2+ refuses any edit of `_users`' security object
            // (PouchDB Server takes it): keep the server's, and say so
            // when it differs from the backup's.
            Err((StatusCode::FORBIDDEN, _)) if db.name == USERS_DB => {
                let now: Option<Value> = conn
                    .get_json(client, &[&db.name, "_security"], &[], what)
                    .await?;
                let saved: Option<Value> = serde_json::from_slice(&security).ok();
                if now != saved {
                    warn!(database = %db.name, "the server does not let its user database's _security object be edited; it keeps its own, not the backup's");
                }
            }
            Err((s, body)) => {
                return Err(conn.status_error(&format!("{what}: _security"), s, &body));
            }
        }
        Ok(())
    }

    /// Posts every revision of `docs.ndjson` in bounded batches (a document
    /// with attachment files goes alone). Returns the revisions loaded and
    /// how many of them carried attachment files.
    async fn docs(&self, id: &str, cancel: &Cancel) -> Result<(u64, u64)> {
        let (conn, client, db, folder, what) =
            (self.conn, self.client, self.db, self.folder, self.what);
        let docs_path = folder.join(DOCS_FILE);
        let mut lines = BufReader::with_capacity(
            READ_BUFFER,
            fs::File::open(&docs_path).ctx("opening", &docs_path)?,
        );
        let mut batch: Vec<u8> = Vec::new();
        let mut in_batch = 0usize;
        let mut line = Vec::new();
        let mut loaded = 0u64;
        let mut with_files_sent = 0u64;
        loop {
            if is_cancelled(cancel) {
                return Err(Error::Cancelled);
            }
            line.clear();
            let n = lines
                .read_until(b'\n', &mut line)
                .ctx("reading", &docs_path)?;
            let doc = line.trim_ascii();
            if let Some(with_files) = attachments::has_files(doc) {
                let sent =
                    attachments::load_doc(conn, client, &db.name, folder, with_files, (what, id))
                        .await?;
                loaded += 1;
                with_files_sent += u64::from(sent);
            } else if !doc.is_empty() {
                if in_batch > 0 && batch.len() + doc.len() > LOAD_BATCH_BYTES {
                    post_batch(conn, client, &db.name, &batch, what).await?;
                    batch.clear();
                    in_batch = 0;
                }
                batch.push(if in_batch == 0 { b'[' } else { b',' });
                batch.extend_from_slice(doc);
                in_batch += 1;
                loaded += 1;
            }
            if in_batch > 0 && (in_batch >= LOAD_BATCH_DOCS || n == 0) {
                post_batch(conn, client, &db.name, &batch, what).await?;
                batch.clear();
                in_batch = 0;
            }
            if n == 0 {
                break;
            }
        }
        Ok((loaded, with_files_sent))
    }

    /// Checks the server's counts against the backup's, when the dump was
    /// exact (nothing was written while it ran).
    async fn check_counts(&self) -> Result<DbInfo> {
        let (conn, client, db, what) = (self.conn, self.client, self.db, self.what);
        let info: DbInfo = conn
            .get_json(client, &[&db.name], &[], what)
            .await?
            .ok_or_else(|| {
                Error::Source(format!(
                    "{}: {what}: the database vanished",
                    conn.describe()
                ))
            })?;
        if db.exact {
            if info.doc_count < db.doc_count {
                return Err(Error::Source(format!(
                    "{}: {what}: {} documents after the load, the backup recorded {}",
                    conn.describe(),
                    info.doc_count,
                    db.doc_count
                )));
            }
            if info.doc_count > db.doc_count {
                warn!(database = %db.name, loaded = info.doc_count, recorded = db.doc_count, "the database holds more documents than the backup: the server had some of its own");
            }
            if let (Some(got), Some(want)) = (info.doc_del_count, db.doc_del_count) {
                if got < want {
                    return Err(Error::Source(format!(
                    "{}: {what}: {got} deleted documents after the load, the backup recorded {want}",
                    conn.describe()
                )));
                }
            }
        }
        Ok(info)
    }
}

/// Posts `[doc,doc,...` (without its closing bracket) as one `_bulk_docs`
/// with `new_edits:false`: revisions are stored as they are, not re-edited.
async fn post_batch(
    conn: &CouchConn,
    client: &Client,
    db: &str,
    docs: &[u8],
    what: &str,
) -> Result<()> {
    let mut body = Vec::with_capacity(docs.len() + 32);
    body.extend_from_slice(b"{\"new_edits\":false,\"docs\":");
    body.extend_from_slice(docs);
    body.extend_from_slice(b"]}");
    let req = conn
        .request(client, Method::POST, &[db, "_bulk_docs"], &[])
        .header("Content-Type", "application/json")
        .body(body);
    let resp = match conn.send(req, what).await? {
        Ok(r) => r,
        Err((s, body)) => return Err(conn.status_error(what, s, &body)),
    };
    let results: Value = resp.json().await.unwrap_or(Value::Null);
    let failed: Vec<&Value> = results
        .as_array()
        .map(|a| a.iter().filter(|r| r.get("error").is_some()).collect())
        .unwrap_or_default();
    if let Some(first) = failed.first() {
        return Err(Error::Source(format!(
            "{}: {what}: {} document(s) refused, e.g. {first}",
            conn.describe(),
            failed.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sequence_counters() {
        assert_eq!(seq_number(&json!(42)), Some(42));
        assert_eq!(seq_number(&json!("17-g1AAAAFTeJzLYWBg")), Some(17));
        assert_eq!(seq_number(&json!("now")), None);
    }

    #[test]
    fn credentials_leave_the_url_and_names_are_one_segment() {
        let c = CouchConn::new(Some("http://admin:pw@127.0.0.1:5984"), None, None).unwrap();
        assert_eq!(c.describe(), "CouchDB at http://127.0.0.1:5984");
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("admin"), Some("pw"))
        );
        assert_eq!(
            c.url_of(&["a/b", "_changes"], &[("since", "0")]).as_str(),
            "http://127.0.0.1:5984/a%2Fb/_changes?since=0"
        );
        let c = CouchConn::new(Some("https://db.example/couch"), Some("u"), Some("p")).unwrap();
        assert_eq!(c.url_of(&["x"], &[]).as_str(), "https://db.example/couch/x");
        assert!(CouchConn::new(Some("localhost:5984"), None, None).is_err());
    }
}
