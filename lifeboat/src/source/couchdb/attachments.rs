//! Attachments too big to travel inline: each is its own tar entry, read
//! from `GET /db/doc/att?rev=` straight into the tar stream while dumping,
//! and sent back from the staged file in a `multipart/related` PUT with
//! `new_edits=false` while loading. Memory stays at a few buffers whatever
//! their size (README "CouchDB").
//!
//! A document revision with such attachments is one NDJSON line like any
//! other; each of its attachments is a stub with `follows: true`, its
//! `length`, the `md5-` digest of its bytes and [`FILE_FIELD`]: the file,
//! relative to the database's folder, at
//! `attachments/<sha256 of the id>/<rev>/<n>-<name>` (`n` its position in
//! the document, the name made safe and cut at [`NAME_KEEP`] bytes).

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::https::{Client, Method, Response, StatusCode};
use bytes::{Buf, Bytes};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tracing::{debug, info};

use super::conn::{CouchConn, DUMP_DIR};
use super::md5::{couch_digest, Md5};
use crate::artifact::safe_file_name;
use crate::error::IoContext;
use crate::progress::{is_cancelled, Cancel, Progress};
use crate::source::seam::{append_stream, SourceReport, READ_BUFFER};
use crate::{Error, Result};

/// Field of an attachment stub in `docs.ndjson` naming its file.
pub const FILE_FIELD: &str = "lifeboat_file";
/// The folder, inside a database's, holding attachment files.
pub const ATTACHMENTS_DIR: &str = "attachments";
/// Bytes of an attachment's (made safe) name kept in its file name.
pub const NAME_KEEP: usize = 100;
/// Transfers at least this big get a log line of their own.
pub const LOG_TRANSFER_MIN: u64 = 8 * 1024 * 1024;

/// The path segments of a document: `_design/x` is two, as CouchDB wants.
pub fn doc_segments<'a>(db: &'a str, id: &'a str) -> Vec<&'a str> {
    match id.strip_prefix("_design/") {
        Some(rest) => vec![db, "_design", rest],
        None => vec![db, id],
    }
}

/// `attachments/<sha256 of id>/<rev>/<n>-<name>`, relative to the
/// database's folder. The position makes it unique in its revision; the
/// name is there for a person reading the tar.
pub fn file_path(id: &str, rev: &str, n: usize, name: &str) -> String {
    let safe = safe_file_name(name);
    let mut keep = NAME_KEEP.min(safe.len());
    while !safe.is_char_boundary(keep) {
        keep -= 1;
    }
    format!(
        "{ATTACHMENTS_DIR}/{}/{}/{n}-{}",
        hex::encode(Sha256::digest(id.as_bytes())),
        safe_file_name(rev),
        &safe[..keep]
    )
}

/// Dumps one leaf revision whose attachments go into files: reads its
/// stubs, streams each attachment into its own tar entry (size from the
/// stub, bytes and md5 checked), and returns the line for `docs.ndjson`.
/// `None` when the revision is gone (replaced and compacted meanwhile).
#[allow(clippy::too_many_arguments)]
pub fn dump_doc<W: Write>(
    conn: &CouchConn,
    rt: &Handle,
    client: &Client,
    (db, db_dir): (&str, &str),
    (id, rev): (&str, &str),
    tar: &mut tar::Builder<W>,
    report: &mut SourceReport,
    (progress, cancel): (&Progress, &Cancel),
) -> Result<Option<Value>> {
    let what = format!("reading database {db:?}");
    let segments = doc_segments(db, id);
    let query = [
        ("rev", rev),
        ("revs", "true"),
        ("att_encoding_info", "true"),
    ];
    let Some(mut doc) = rt.block_on(conn.get_json::<Value>(client, &segments, &query, &what))?
    else {
        return Ok(None);
    };
    let Some(stubs) = doc.get_mut("_attachments").and_then(Value::as_object_mut) else {
        return Ok(Some(doc));
    };
    for (n, (name, stub)) in stubs.iter_mut().enumerate() {
        let about = format!("{what}: document {id:?} revision {rev}, attachment {name:?}");
        let length = stub
            .get("length")
            .and_then(Value::as_u64)
            .ok_or_else(|| conn.error(&about, "the server's stub has no length"))?;
        // An attachment CouchDB keeps compressed (`encoding`) has the digest
        // of the compressed bytes; we get and check the plain ones.
        let expect = match stub.get("encoding") {
            None => stub.get("digest").and_then(Value::as_str).map(String::from),
            Some(_) => None,
        };
        let rel = file_path(id, rev, n, name);
        let mut url_segments = segments.clone();
        url_segments.push(name);
        let mut req = client
            .get(conn.url_of(&url_segments, &[("rev", rev)]))
            .header("Accept", "*/*");
        if let Some(user) = &conn.user {
            req = req.basic_auth(user, conn.password.as_ref());
        }
        let resp = match rt.block_on(conn.send(req, &about))? {
            Ok(r) => r,
            Err((StatusCode::NOT_FOUND, _)) => {
                debug!(database = %db, id, rev, "revision gone before its attachments were read");
                return Ok(None);
            }
            Err((s, body)) => return Err(conn.status_error(&about, s, &body)),
        };
        let started = Instant::now();
        let mut reader = AttachmentReader {
            rt,
            resp,
            chunk: Bytes::new(),
            got: 0,
            want: length,
            md5: Md5::default(),
            expect,
            digest: None,
            failure: None,
            progress,
            cancel,
            conn,
            about: &about,
        };
        let entry = format!("{DUMP_DIR}/{db_dir}/{rel}");
        let written = append_stream(tar, report, &entry, length, &mut reader);
        if let Some(e) = reader.failure.take() {
            return Err(e);
        }
        written?;
        let digest = reader.digest.take().expect("set at the end of the bytes");
        if length >= LOG_TRANSFER_MIN {
            let secs = started.elapsed();
            info!(database = %db, mib = length / (1024 * 1024), seconds = secs.as_secs(),
                mib_per_s = crate::progress::mib_per_s(length, secs), "attachment dumped");
        }
        let mut out = Map::new();
        for keep in ["content_type", "revpos"] {
            if let Some(v) = stub.get(keep) {
                out.insert(keep.into(), v.clone());
            }
        }
        out.insert("digest".into(), digest.into());
        out.insert("length".into(), length.into());
        out.insert("follows".into(), true.into());
        out.insert(FILE_FIELD.into(), rel.into());
        *stub = Value::Object(out);
    }
    Ok(Some(doc))
}

/// An attachment's body as the tar entry's bytes: exactly `want` bytes or
/// an error (a tar entry's size is written before its bytes), the md5
/// checked at the end when the server's digest is of these bytes.
struct AttachmentReader<'a> {
    rt: &'a Handle,
    resp: Response,
    chunk: Bytes,
    got: u64,
    want: u64,
    md5: Md5,
    /// The server's `md5-` digest of the plain bytes, if it has one.
    expect: Option<String>,
    /// Ours, once every byte is in.
    digest: Option<String>,
    /// Why the read failed, as our error rather than the tar's.
    failure: Option<Error>,
    progress: &'a Progress,
    cancel: &'a Cancel,
    conn: &'a CouchConn,
    about: &'a str,
}

impl AttachmentReader<'_> {
    fn fail(&mut self, e: Error) -> io::Error {
        let msg = e.to_string();
        self.failure = Some(e);
        io::Error::other(msg)
    }
}

impl Read for AttachmentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.digest.is_some() {
                return Ok(0);
            }
            if is_cancelled(self.cancel) {
                return Err(self.fail(Error::Cancelled));
            }
            match self.rt.block_on(self.resp.chunk()) {
                Ok(Some(c)) => {
                    self.got += c.len() as u64;
                    if self.got > self.want {
                        let e = self.conn.error(
                            self.about,
                            format!(
                                "the server sent more than the {} bytes its stub says; nothing was committed",
                                self.want
                            ),
                        );
                        return Err(self.fail(e));
                    }
                    self.md5.update(&c);
                    self.progress.add_bytes(c.len() as u64);
                    self.chunk = c;
                }
                Ok(None) => {
                    if self.got < self.want {
                        let e = self.conn.error(
                            self.about,
                            format!(
                                "the server sent {} of the {} bytes its stub says; nothing was committed",
                                self.got, self.want
                            ),
                        );
                        return Err(self.fail(e));
                    }
                    let digest = couch_digest(self.md5.clone().finish());
                    if let Some(expect) = self.expect.as_deref().filter(|d| *d != digest) {
                        let e = self.conn.error(
                            self.about,
                            format!(
                                "the bytes' digest is {digest}, the server's stub says {expect}; nothing was committed"
                            ),
                        );
                        return Err(self.fail(e));
                    }
                    self.digest = Some(digest);
                }
                Err(e) => {
                    let e = self.conn.error(self.about, crate::error::error_chain(&e));
                    return Err(self.fail(e));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Whether a `docs.ndjson` line has attachments in files. A cheap look for
/// the field's name first; the parse decides.
pub fn has_files(line: &[u8]) -> Option<Value> {
    let needle = format!("\"{FILE_FIELD}\"");
    if !line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        return None;
    }
    let doc: Value = serde_json::from_slice(line).ok()?;
    let stubs = doc.get("_attachments")?.as_object()?;
    stubs
        .values()
        .any(|s| s.get(FILE_FIELD).is_some())
        .then_some(doc)
}

/// One attachment file to send.
struct Part {
    file: fs::File,
    path: PathBuf,
    length: u64,
    name: String,
    content_type: Option<String>,
    digest: Option<String>,
}

/// Loads one revision whose attachments are staged files: skipped if the
/// server has it (`_revs_diff`), else one `multipart/related` PUT with
/// `new_edits=false`, the document first, then each file in the order of
/// `_attachments`. The body is put together in an unlinked file in `TMPDIR`
/// (this HTTP client sends a streamed body only from a file), so memory
/// stays at a buffer. Returns whether it was sent.
pub async fn load_doc(
    conn: &CouchConn,
    client: &Client,
    db: &str,
    folder: &Path,
    mut doc: Value,
    (what, artifact): (&str, &str),
) -> Result<bool> {
    let corrupt = |reason: String| Error::Corrupt {
        id: artifact.to_string(),
        reason,
    };
    let (Some(id), Some(rev)) = (
        doc.get("_id").and_then(Value::as_str).map(String::from),
        doc.get("_rev").and_then(Value::as_str).map(String::from),
    ) else {
        return Err(corrupt(format!(
            "a line of database {db:?} with attachment files has no _id or _rev"
        )));
    };
    let diff = conn
        .request(client, Method::POST, &[db, "_revs_diff"], &[])
        .json(&json!({ &id: [&rev] }));
    let missing: Option<Value> = conn.fetch_json(diff, what).await?;
    if missing.as_ref().is_some_and(|m| m.get(&id).is_none()) {
        debug!(database = %db, id, rev, "already loaded");
        return Ok(false);
    }
    let parts = staged_parts(&mut doc, folder, db, &id, &corrupt)?;
    let total: u64 = parts.iter().map(|p| p.length).sum();
    let boundary = boundary(&id, &rev);
    let json = serde_json::to_vec(&doc).expect("JSON serializes");
    let started = Instant::now();
    let b = boundary.clone();
    let (body, size) = tokio::task::spawn_blocking(move || multipart_body(&b, &json, parts))
        .await
        .map_err(|e| Error::Source(format!("building a request body: {e}")))?
        .map_err(|e| match e {
            BodyError::Io(what, e) => Error::io(what, e),
            BodyError::Corrupt(reason) => corrupt(reason),
        })?;
    let stream = aws_sdk_s3::primitives::ByteStream::read_from()
        .file(tokio::fs::File::from_std(body))
        .length(aws_sdk_s3::primitives::Length::Exact(size))
        .buffer_size(READ_BUFFER)
        .build()
        .await
        .map_err(|e| Error::io("reading the spooled request body", io::Error::other(e)))?;
    let put = conn
        .request(
            client,
            Method::PUT,
            &doc_segments(db, &id),
            &[("new_edits", "false")],
        )
        .header(
            "Content-Type",
            format!("multipart/related; boundary=\"{boundary}\""),
        )
        .header("Content-Length", size)
        .body_stream(stream.into_inner());
    let about = format!("{what}: document {id:?} revision {rev} with attachments");
    let resp = match conn.send(put, &about).await? {
        Ok(r) => r,
        Err((s, body)) => return Err(conn.status_error(&about, s, &body)),
    };
    // CouchDB answers {"ok":true,...}; PouchDB Server [] (or [{error}]).
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    let refused = match &answer {
        Value::Array(a) => a.iter().find(|r| r.get("error").is_some()),
        v if v.get("error").is_some() => Some(v),
        _ => None,
    };
    if let Some(r) = refused {
        return Err(conn.error(&about, format!("refused: {r}")));
    }
    if total >= LOG_TRANSFER_MIN {
        let secs = started.elapsed();
        info!(database = %db, mib = total / (1024 * 1024), seconds = secs.as_secs(),
            mib_per_s = crate::progress::mib_per_s(total, secs), "document with attachments loaded");
    }
    Ok(true)
}

/// The staged files of a revision's attachments, in the order of
/// `_attachments`, each stub marked `follows` in `doc`.
fn staged_parts(
    doc: &mut Value,
    folder: &Path,
    db: &str,
    id: &str,
    corrupt: &dyn Fn(String) -> Error,
) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let stubs = doc
        .get_mut("_attachments")
        .and_then(Value::as_object_mut)
        .expect("has_files checked");
    for (name, stub) in stubs.iter_mut() {
        let Some(obj) = stub.as_object_mut() else {
            continue;
        };
        let Some(rel) = obj.remove(FILE_FIELD) else {
            continue;
        };
        let rel = rel.as_str().unwrap_or_default().to_string();
        let length = obj.get("length").and_then(Value::as_u64).ok_or_else(|| {
            corrupt(format!(
                "attachment {name:?} of {id:?} in database {db:?} has no length"
            ))
        })?;
        let (file, path) = open_staged(folder, &rel).map_err(corrupt)?;
        let size = file.metadata().ctx("reading", &path)?.len();
        if size != length {
            return Err(corrupt(format!(
                "{} holds {size} bytes, its line says {length}",
                path.display()
            )));
        }
        obj.insert("follows".into(), true.into());
        parts.push(Part {
            file,
            path,
            length,
            name: name.clone(),
            content_type: obj
                .get("content_type")
                .and_then(Value::as_str)
                .map(String::from),
            digest: obj.get("digest").and_then(Value::as_str).map(String::from),
        });
    }
    Ok(parts)
}

/// A staged attachment file named by a line: inside `folder` (no `..`, no
/// symlink out of it), a regular file.
fn open_staged(folder: &Path, rel: &str) -> std::result::Result<(fs::File, PathBuf), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let clean = crate::tar_read::clean_name(rel.as_bytes())
        .map_err(|why| format!("attachment file {rel:?} {why}"))?;
    if !clean.starts_with(ATTACHMENTS_DIR) {
        return Err(format!(
            "attachment file {rel:?} is not under {ATTACHMENTS_DIR}/"
        ));
    }
    let path = folder.join(&clean);
    let inside = fs::canonicalize(&path)
        .and_then(|real| Ok(real.starts_with(fs::canonicalize(folder)?)))
        .map_err(|e| format!("attachment file {}: {e}", path.display()))?;
    if !inside {
        return Err(format!(
            "attachment file {} leads out of the dump",
            path.display()
        ));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("attachment file {}: {e}", path.display()))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok((file, path)),
        Ok(_) => Err(format!(
            "attachment file {} is not a regular file",
            path.display()
        )),
        Err(e) => Err(format!("attachment file {}: {e}", path.display())),
    }
}

/// A boundary no attachment will hold: 128 bits from the clock, the
/// process and the revision.
fn boundary(id: &str, rev: &str) -> String {
    let mut h = Sha256::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(id.as_bytes());
    h.update(rev.as_bytes());
    format!("lifeboat-{}", &hex::encode(h.finalize())[..32])
}

enum BodyError {
    Io(String, io::Error),
    Corrupt(String),
}

/// A header value without line breaks or quotes that would end it.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => "%22".to_string(),
            '\\' => "%5C".to_string(),
            c if c.is_control() => format!("%{:02X}", c as u32 & 0xff),
            c => c.to_string(),
        })
        .collect()
}

/// Writes the multipart body into an unlinked file in `TMPDIR`, checking
/// each staged file's md5 against its line's digest on the way; returns
/// the file at its start and its size.
fn multipart_body(
    boundary: &str,
    json: &[u8],
    parts: Vec<Part>,
) -> std::result::Result<(fs::File, u64), BodyError> {
    let tmp = std::env::temp_dir();
    let spool_err = |e: io::Error| {
        BodyError::Io(
            format!(
                "spooling a document with its attachments to {} (TMPDIR; it must hold the largest document)",
                tmp.display()
            ),
            e,
        )
    };
    let spool = tempfile::tempfile().map_err(spool_err)?;
    let mut out = io::BufWriter::with_capacity(READ_BUFFER, &spool);
    let head = format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n");
    out.write_all(head.as_bytes()).map_err(spool_err)?;
    out.write_all(json).map_err(spool_err)?;
    let mut buf = vec![0u8; READ_BUFFER];
    for mut part in parts {
        let mut head = format!(
            "\r\n--{boundary}\r\nContent-Disposition: attachment; filename=\"{}\"\r\n",
            header_safe(&part.name)
        );
        if let Some(ct) = &part.content_type {
            head.push_str(&format!("Content-Type: {}\r\n", header_safe(ct)));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes()).map_err(spool_err)?;
        let mut md5 = Md5::default();
        let mut left = part.length;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = part
                .file
                .read(&mut buf[..want])
                .map_err(|e| BodyError::Io(format!("reading {}", part.path.display()), e))?;
            if n == 0 {
                return Err(BodyError::Corrupt(format!(
                    "{} ended {left} bytes early",
                    part.path.display()
                )));
            }
            md5.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(spool_err)?;
            left -= n as u64;
        }
        let digest = couch_digest(md5.finish());
        if let Some(want) = part.digest.as_deref().filter(|d| *d != digest) {
            return Err(BodyError::Corrupt(format!(
                "{} has the digest {digest}, its line says {want}",
                part.path.display()
            )));
        }
    }
    out.write_all(format!("\r\n--{boundary}--").as_bytes())
        .map_err(spool_err)?;
    out.flush().map_err(spool_err)?;
    drop(out);
    let mut spool = spool;
    let size = spool.stream_position().map_err(spool_err)?;
    spool.rewind().map_err(spool_err)?;
    Ok((spool, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_are_one_folder_per_revision_and_readable_names() {
        let p = file_path("photo", "2-abc", 0, "holiday.jpg");
        assert_eq!(
            p,
            format!(
                "attachments/{}/2-abc/0-holiday.jpg",
                hex::encode(Sha256::digest(b"photo"))
            )
        );
        // Slashes and a leading dot never make a path; long names are cut
        // on a character boundary.
        assert!(file_path("x", "1-a", 1, "../../etc").ends_with("/1-%2E.%2F..%2Fetc"));
        assert!(file_path("x", "1-a", 2, ".hidden").ends_with("/2-%2Ehidden"));
        let long = file_path("x", "1-a", 3, &"é".repeat(200));
        let name = long.rsplit('/').next().unwrap();
        assert!(name.len() <= NAME_KEEP + 2, "{name}");
        assert_eq!(doc_segments("db", "_design/app"), ["db", "_design", "app"]);
        assert_eq!(doc_segments("db", "a/b"), ["db", "a/b"]);
    }

    #[test]
    fn only_lines_with_attachment_files_are_picked() {
        assert!(has_files(br#"{"_id":"a","_rev":"1-x"}"#).is_none());
        // The field's name in a document's own data is not an attachment file.
        assert!(has_files(br#"{"_id":"a","text":"\"lifeboat_file\""}"#).is_none());
        assert!(has_files(
            br#"{"_id":"a","_attachments":{"f":{"follows":true,"length":1,"lifeboat_file":"attachments/x"}}}"#
        )
        .is_some());
    }

    #[test]
    fn staged_files_stay_inside_the_dump() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        fs::create_dir_all(db.join("attachments/k")).unwrap();
        fs::write(db.join("attachments/k/f"), b"x").unwrap();
        fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path(), db.join("attachments/out")).unwrap();
        std::os::unix::fs::symlink("../../secret", db.join("attachments/k/link")).unwrap();
        assert!(open_staged(&db, "attachments/k/f").is_ok());
        for bad in [
            "../secret",
            "/etc/passwd",
            "docs.ndjson",
            "attachments/out/secret",
            "attachments/k/link",
        ] {
            assert!(open_staged(&db, bad).is_err(), "{bad}");
        }
    }
}
