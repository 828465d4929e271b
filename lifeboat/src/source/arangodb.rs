//! The `arangodb` source: a logical dump over the HTTP API that arangodump
//! uses (docs/ARCHITECTURE.md §2, the source map), loaded back through the pending load.
//!
//! Per database: a dump batch (a snapshot the server keeps while its TTL
//! lasts, prolonged as we go and deleted at the end), the inventory of
//! collections and indexes, then each collection's documents in chunks while
//! `x-arango-replication-checkmore` says there are more. Written in
//! arangodump's layout, so `arangorestore` reads it too:
//! `arangodb/<db>/dump.json`, `<collection>.structure.json`,
//! `<collection>.data.json` (one document per line).

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::https::{Client, Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::kind::SourceKind;
use super::seam::{append_stream, Dump, Logical, SourceCtx, SourceReport, Spool, READ_BUFFER};
use crate::artifact::safe_file_name;
use crate::error::IoContext;
use crate::http::{Endpoint, Kind};
use crate::json_split::MAX_OBJECT;
use crate::manifest::Manifest;
use crate::progress::{is_cancelled, Cancel};
use crate::source::load::LoadState;
use crate::{Error, Result};

pub const DUMP_DIR: &str = "arangodb";
pub const DEFAULT_URL: &str = "http://127.0.0.1:8529";
/// How long the server keeps a dump batch without hearing from us.
pub const BATCH_TTL: Duration = Duration::from_secs(300);
/// The batch is prolonged at least this often (well inside its TTL).
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(60);
/// Bytes the server puts in one dump reply (approximately).
pub const CHUNK_SIZE: u64 = 4 * 1024 * 1024;
/// Loading: documents and bytes per `/_api/import` request.
pub const LOAD_BATCH_DOCS: usize = 1000;
pub const LOAD_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// System collections worth keeping: users, graph definitions, analyzers
/// and AQL functions. The rest (statistics, queues, Foxx) is server state.
const SYSTEM_KEPT: &[&str] = &["_users", "_graphs", "_analyzers", "_aqlfunctions"];

/// ArangoDB's HTTP API, from `LIFEBOAT_ARANGODB_URL`,
/// `LIFEBOAT_ARANGODB_USER` (default `root`) and `LIFEBOAT_ARANGODB_PASSWORD`,
/// else `ARANGO_ROOT_PASSWORD` (the official image's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArangoConn(pub Endpoint);

const KIND: Kind = Kind {
    name: "ArangoDB",
    default_url: DEFAULT_URL,
    unreachable_hint: "is ArangoDB running? check LIFEBOAT_ARANGODB_URL",
    auth_hint: "check LIFEBOAT_ARANGODB_USER and LIFEBOAT_ARANGODB_PASSWORD or ARANGO_ROOT_PASSWORD; backups need an admin",
    reason_fields: &["errorMessage"],
};

impl ArangoConn {
    pub fn new(
        url: Option<&str>,
        user: Option<&str>,
        password: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let mut e = Endpoint::new(KIND, url, user, password)?;
        e.user.get_or_insert_with(|| "root".into());
        Ok(ArangoConn(e))
    }

    /// A request to `/_db/<db>/<path...>`.
    fn in_db(
        &self,
        client: &Client,
        method: Method,
        db: &str,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> RequestBuilder {
        let segments: Vec<&str> = ["_db", db].iter().chain(path).copied().collect();
        self.0.request(client, method, &segments, query)
    }
}

impl std::ops::Deref for ArangoConn {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.0
    }
}

/// One collection in `source_meta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpedCollection {
    pub name: String,
    /// 2 = documents, 3 = edges.
    pub r#type: u64,
    pub file: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpedDb {
    pub name: String,
    pub dir: String,
    pub collections: Vec<DumpedCollection>,
}

/// The manifest's `source_meta` for an ArangoDB dump, written and read as this type.
#[derive(Debug, Serialize, Deserialize)]
struct ArangoMeta {
    #[serde(default)]
    server: ArangoServer,
    databases: Vec<DumpedDb>,
}

/// What answered the dump (`/_api/version`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ArangoServer {
    version: Option<Value>,
    server: Option<Value>,
}

pub type ArangoSource = Logical<ArangoConn>;

fn gone(conn: &ArangoConn, what: &str) -> Error {
    Error::Source(format!(
        "{}: {what}: not found (the database or collection was deleted during the dump?); nothing was committed",
        conn.describe()
    ))
}

/// The batch of one database's dump; deleted on every way out.
struct Batch<'a> {
    conn: &'a ArangoConn,
    client: &'a Client,
    db: &'a str,
    id: String,
    prolonged: Instant,
}

impl Batch<'_> {
    async fn keep_alive(&mut self, force: bool) -> Result<()> {
        if !force && self.prolonged.elapsed() < KEEPALIVE_EVERY {
            return Ok(());
        }
        let req = self
            .conn
            .in_db(
                self.client,
                Method::PUT,
                self.db,
                &["_api", "replication", "batch", &self.id],
                &[],
            )
            .json(&json!({ "ttl": BATCH_TTL.as_secs() }));
        let what = format!("prolonging the dump batch of {:?}", self.db);
        self.conn
            .fetch_json::<Value>(req, &what)
            .await?
            .ok_or_else(|| gone(self.conn, &what))?;
        self.prolonged = Instant::now();
        Ok(())
    }

    async fn release(self) {
        let req = self.conn.in_db(
            self.client,
            Method::DELETE,
            self.db,
            &["_api", "replication", "batch", &self.id],
            &[],
        );
        if let Err(e) = self
            .conn
            .fetch_json::<Value>(req, "deleting the dump batch")
            .await
        {
            warn!(database = %self.db, error = %e, "could not delete the dump batch; the server drops it when its TTL ends");
        }
    }
}

impl ArangoSource {
    async fn dump_db<W: Write>(
        &self,
        client: &Client,
        db: &str,
        tar: &mut tar::Builder<W>,
        report: &mut SourceReport,
        ctx: &SourceCtx,
    ) -> Result<DumpedDb> {
        let conn = &self.conn;
        let what = format!("dumping database {db:?}");
        let created = conn
            .fetch_json::<Value>(
                conn.in_db(
                    client,
                    Method::POST,
                    db,
                    &["_api", "replication", "batch"],
                    &[],
                )
                .json(&json!({ "ttl": BATCH_TTL.as_secs() })),
                &what,
            )
            .await?
            .ok_or_else(|| gone(conn, &what))?;
        let id = match &created["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(conn.error(&what, "the batch has no id")),
        };
        let mut batch = Batch {
            conn,
            client,
            db,
            id,
            prolonged: Instant::now(),
        };
        let r = self.dump_batch(&mut batch, tar, report, ctx, &what).await;
        batch.release().await;
        r
    }

    async fn dump_batch<W: Write>(
        &self,
        batch: &mut Batch<'_>,
        tar: &mut tar::Builder<W>,
        report: &mut SourceReport,
        ctx: &SourceCtx,
        what: &str,
    ) -> Result<DumpedDb> {
        let (conn, client, db) = (batch.conn, batch.client, batch.db);
        let dir = safe_file_name(db);
        let inventory = conn
            .fetch_json::<Value>(
                conn.in_db(
                    client,
                    Method::GET,
                    db,
                    &["_api", "replication", "inventory"],
                    &[("batchId", &batch.id), ("includeSystem", "true")],
                ),
                what,
            )
            .await?
            .ok_or_else(|| gone(conn, what))?;
        let dump_json = serde_json::to_vec_pretty(&json!({
            "database": db,
            "lastTickAtDumpStart": inventory.get("tick"),
            "properties": inventory.get("properties"),
            "views": inventory.get("views"),
        }))
        .expect("JSON serializes");
        append_stream(
            tar,
            report,
            &format!("{DUMP_DIR}/{dir}/dump.json"),
            dump_json.len() as u64,
            dump_json.as_slice(),
        )?;
        let mut out = DumpedDb {
            name: db.to_string(),
            dir: dir.clone(),
            collections: Vec::new(),
        };
        let collections = inventory["collections"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for c in collections {
            let params = &c["parameters"];
            let name = params["name"].as_str().unwrap_or_default().to_string();
            if name.is_empty() || (name.starts_with('_') && !SYSTEM_KEPT.contains(&name.as_str())) {
                continue;
            }
            if params["deleted"] == Value::Bool(true) {
                continue;
            }
            let file = safe_file_name(&name);
            let structure = serde_json::to_vec_pretty(&json!({
                "parameters": params,
                "indexes": c.get("indexes").cloned().unwrap_or(json!([])),
            }))
            .expect("JSON serializes");
            append_stream(
                tar,
                report,
                &format!("{DUMP_DIR}/{dir}/{file}.structure.json"),
                structure.len() as u64,
                structure.as_slice(),
            )?;
            let spool = Spool::new(&self.spool_dir, format!("collection {name:?}"))?;
            let count = self
                .dump_collection(batch, &name, &spool, ctx, what)
                .await?;
            let size =
                spool.append_to(tar, report, &format!("{DUMP_DIR}/{dir}/{file}.data.json"))?;
            info!(database = %db, collection = %name, documents = count, size, "collection dumped");
            out.collections.push(DumpedCollection {
                name,
                r#type: params["type"].as_u64().unwrap_or(2),
                file,
                count,
            });
        }
        Ok(out)
    }

    /// Writes one document per line into `spool`; returns how many.
    async fn dump_collection(
        &self,
        batch: &mut Batch<'_>,
        name: &str,
        spool: &Spool,
        ctx: &SourceCtx,
        what: &str,
    ) -> Result<u64> {
        let (conn, client, db) = (batch.conn, batch.client, batch.db);
        let mut out = BufWriter::with_capacity(READ_BUFFER, spool.file());
        batch.keep_alive(true).await?;
        let chunk = CHUNK_SIZE.to_string();
        let mut count = 0u64;
        let mut line = Vec::new();
        loop {
            if is_cancelled(&ctx.cancel) {
                return Err(Error::Cancelled);
            }
            batch.keep_alive(false).await?;
            let req = conn.in_db(
                client,
                Method::GET,
                db,
                &["_api", "replication", "dump"],
                &[
                    ("collection", name),
                    ("batchId", &batch.id),
                    ("chunkSize", &chunk),
                ],
            );
            let mut resp = match conn.send(req, what).await? {
                Ok(r) => r,
                Err((StatusCode::NOT_FOUND, _)) => {
                    return Err(gone(conn, &format!("{what}: collection {name:?}")))
                }
                Err((s, body)) => return Err(conn.status_error(what, s, &body)),
            };
            let more = resp
                .headers()
                .get("x-arango-replication-checkmore")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.eq_ignore_ascii_case("true"))
                .unwrap_or(false);
            if resp.status() == StatusCode::NO_CONTENT {
                break;
            }
            // One entry per line; a line is held only until it is written.
            let mut entry = |line: &[u8]| -> Result<u64> {
                let Some(doc) = document_of(line)
                    .map_err(|e| conn.error(what, format!("bad dump line: {e}")))?
                else {
                    return Ok(0);
                };
                serde_json::to_writer(&mut out, &doc)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| spool.error(e))?;
                Ok(1)
            };
            while let Some(bytes) = resp.chunk().await.map_err(|e| conn.error(what, e))? {
                ctx.progress.add_bytes(bytes.len() as u64);
                for part in bytes.split_inclusive(|b| *b == b'\n') {
                    line.extend_from_slice(part);
                    if line.last() == Some(&b'\n') {
                        count += entry(&line)?;
                        line.clear();
                    } else if line.len() > MAX_OBJECT {
                        return Err(conn.error(what, format!("a document in {name:?} is larger than {} MiB, more than lifeboat holds in memory", MAX_OBJECT >> 20)));
                    }
                }
            }
            if !line.is_empty() {
                count += entry(&line)?;
                line.clear();
            }
            if !more {
                break;
            }
        }
        out.flush().map_err(|e| spool.error(e))?;
        Ok(count)
    }
}

/// A dump line is either a marker (`{"type":2300,"data":{...}}`, older
/// servers) or the document itself; deletions (2302) and blank lines are
/// not data.
fn document_of(line: &[u8]) -> serde_json::Result<Option<Value>> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let mut v: Value = serde_json::from_slice(trimmed)?;
    Ok(match v.get("type").and_then(Value::as_u64) {
        Some(2300 | 2301) if v.get("data").is_some() => Some(v["data"].take()),
        Some(2302) => None,
        _ => Some(v),
    })
}

impl Dump for ArangoConn {
    const KIND: SourceKind = SourceKind::ArangoDb;

    fn dump<W: Write>(
        this: &ArangoSource,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        let rt = Handle::current();
        let conn = &this.conn;
        let client = conn.client()?;
        let version = rt
            .block_on(conn.fetch_json::<Value>(
                conn.in_db(&client, Method::GET, "_system", &["_api", "version"], &[]),
                "connecting",
            ))?
            .unwrap_or_default();
        let listed = rt
            .block_on(conn.fetch_json::<Value>(
                conn.in_db(&client, Method::GET, "_system", &["_api", "database"], &[]),
                "listing databases",
            ))?
            .unwrap_or_default();
        let existing: Vec<String> = listed["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let names = this
            .databases
            .select(&existing)
            .map_err(|m| Error::Source(format!("{}: {m}", conn.describe())))?;
        let mut report = SourceReport::default();
        let mut dumped = Vec::new();
        for db in &names {
            dumped.push(rt.block_on(this.dump_db(&client, db, tar, &mut report, ctx))?);
        }
        let meta = ArangoMeta {
            server: ArangoServer {
                version: version.get("version").cloned(),
                server: version.get("server").cloned(),
            },
            databases: dumped,
        };
        Ok(report.with_meta(&meta))
    }
}

/// Whether ArangoDB answers, so a load can start.
pub async fn ready(conn: &ArangoConn) -> Result<()> {
    let client = conn.client()?;
    conn.fetch_json::<Value>(
        conn.in_db(&client, Method::GET, "_system", &["_api", "version"], &[]),
        "connecting",
    )
    .await
    .map(drop)
}

/// Loads a staged dump: databases, then per database the document
/// collections before the edge collections (edges point at vertices), each
/// created with its properties and indexes, its documents imported with
/// `onDuplicate=replace` so a redone load gives the same result.
pub async fn load(conn: &ArangoConn, dir: &Path, m: &Manifest, cancel: &Cancel) -> Result<()> {
    let (meta, mut state): (ArangoMeta, LoadState) = super::load::resume(dir, m)?;
    let client = conn.client()?;
    for db in super::load::to_load(&state, m, &meta.databases, |d| (&d.name, &d.dir))? {
        let what = format!("loading database {:?}", db.name);
        if db.name != "_system" {
            let req = conn
                .in_db(&client, Method::POST, "_system", &["_api", "database"], &[])
                .json(&json!({ "name": db.name }));
            match conn.send(req, &what).await? {
                Ok(_) | Err((StatusCode::CONFLICT, _)) => {}
                Err((s, body)) => return Err(conn.status_error(&what, s, &body)),
            }
        }
        let folder = dir.join(DUMP_DIR).join(&db.dir);
        let mut ordered: Vec<&DumpedCollection> = db.collections.iter().collect();
        ordered.sort_by_key(|c| c.r#type);
        for c in ordered {
            super::load::check_name(m, &c.file)?;
            let structure_path = folder.join(format!("{}.structure.json", c.file));
            let structure: Value =
                serde_json::from_slice(&fs::read(&structure_path).ctx("reading", &structure_path)?)
                    .map_err(|e| Error::Corrupt {
                        id: m.id.clone(),
                        reason: format!("{}: {e}", structure_path.display()),
                    })?;
            create_collection(conn, &client, &db.name, &structure, &what).await?;
            let data = folder.join(format!("{}.data.json", c.file));
            import(conn, &client, &db.name, &c.name, &data, cancel, &what).await?;
            let counted = conn
                .fetch_json::<Value>(
                    conn.in_db(
                        &client,
                        Method::GET,
                        &db.name,
                        &["_api", "collection", &c.name, "count"],
                        &[],
                    ),
                    &what,
                )
                .await?
                .unwrap_or_default();
            let n = counted["count"].as_u64().unwrap_or(0);
            if n < c.count {
                return Err(Error::Source(format!(
                    "{}: {what}: collection {:?} holds {n} documents after the load, the backup recorded {}",
                    conn.describe(),
                    c.name,
                    c.count
                )));
            }
            info!(database = %db.name, collection = %c.name, documents = n, "collection loaded");
        }
        state.finish(dir, &db.name)?;
    }
    Ok(())
}

/// Creates a collection with the properties that define it, then its
/// indexes; both are no-ops when they exist (system collections do).
async fn create_collection(
    conn: &ArangoConn,
    client: &Client,
    db: &str,
    structure: &Value,
    what: &str,
) -> Result<()> {
    let p = &structure["parameters"];
    let name = p["name"].as_str().unwrap_or_default();
    let mut body = json!({ "name": name, "type": p["type"] });
    for key in [
        "keyOptions",
        "waitForSync",
        "schema",
        "cacheEnabled",
        "computedValues",
        "isSystem",
    ] {
        if let Some(v) = p.get(key).filter(|v| !v.is_null()) {
            body[key] = v.clone();
        }
    }
    let req = conn
        .in_db(client, Method::POST, db, &["_api", "collection"], &[])
        .json(&body);
    match conn.send(req, what).await? {
        Ok(_) | Err((StatusCode::CONFLICT, _)) => {}
        Err((s, text)) => {
            return Err(conn.status_error(&format!("{what}: creating {name:?}"), s, &text))
        }
    }
    for idx in structure["indexes"].as_array().cloned().unwrap_or_default() {
        if matches!(idx["type"].as_str(), Some("primary" | "edge")) {
            continue;
        }
        let mut def = idx.clone();
        if let Some(o) = def.as_object_mut() {
            o.remove("id");
            o.remove("selectivityEstimate");
            o.remove("figures");
        }
        let req = conn
            .in_db(
                client,
                Method::POST,
                db,
                &["_api", "index"],
                &[("collection", name)],
            )
            .json(&def);
        if let Err((s, text)) = conn.send(req, what).await? {
            return Err(conn.status_error(&format!("{what}: index on {name:?}"), s, &text));
        }
    }
    Ok(())
}

/// Imports NDJSON in bounded batches; existing keys are replaced.
async fn import(
    conn: &ArangoConn,
    client: &Client,
    db: &str,
    collection: &str,
    path: &Path,
    cancel: &Cancel,
    what: &str,
) -> Result<()> {
    let mut r = BufReader::with_capacity(READ_BUFFER, fs::File::open(path).ctx("opening", path)?);
    let mut batch = Vec::new();
    let mut docs = 0usize;
    let mut line = Vec::new();
    loop {
        if is_cancelled(cancel) {
            return Err(Error::Cancelled);
        }
        line.clear();
        let n = r.read_until(b'\n', &mut line).ctx("reading", path)?;
        let doc = line.trim_ascii();
        if !doc.is_empty() {
            batch.extend_from_slice(doc);
            batch.push(b'\n');
            docs += 1;
        }
        if docs > 0 && (n == 0 || docs >= LOAD_BATCH_DOCS || batch.len() >= LOAD_BATCH_BYTES) {
            let req = conn
                .in_db(
                    client,
                    Method::POST,
                    db,
                    &["_api", "import"],
                    &[
                        ("collection", collection),
                        ("type", "documents"),
                        ("onDuplicate", "replace"),
                        ("details", "true"),
                    ],
                )
                .header("Content-Type", "application/x-ndjson")
                .body(std::mem::take(&mut batch));
            let res = conn
                .fetch_json::<Value>(req, what)
                .await?
                .ok_or_else(|| gone(conn, what))?;
            if res["errors"].as_u64().unwrap_or(0) > 0 {
                return Err(Error::Source(format!(
                    "{}: {what}: {} document(s) of {collection:?} refused: {}",
                    conn.describe(),
                    res["errors"],
                    res["details"]
                )));
            }
            docs = 0;
        }
        if n == 0 {
            break;
        }
    }
    Ok(())
}
