//! Reading a `pg_dump -Fc` archive's table of contents (`pg_restore -C -l`)
//! to decide how to load it: a database that uses TimescaleDB must be
//! loaded in TimescaleDB's restore mode, which needs the database created
//! first, then the extension and `timescaledb_pre_restore()`, then the rest
//! (see docs/ARCHITECTURE.md, "Logical PostgreSQL loads").
//!
//! A TOC line reads `<dump id>; <catalog oid> <oid> <type> <schema> <name> <owner>`;
//! comment lines start with `;`. The TOC is read line by line: a database
//! with 100,000 chunks has a TOC of that many lines, never held whole.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use crate::error::IoContext;
use crate::Result;

/// The part of a TOC line after the dump id and the two oids.
fn object(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(';')?;
    let mut fields = rest.trim_start().splitn(3, ' ');
    fields.next()?;
    fields.next()?;
    fields.next().map(str::trim_end)
}

/// The database itself and what hangs on it (`DATABASE`, `DATABASE
/// PROPERTIES`, and `COMMENT`/`ACL`/`SECURITY LABEL` on the database): what
/// `pg_restore --create` restores before it connects to the new database.
fn is_database_entry(object: &str) -> bool {
    object.starts_with("DATABASE ")
        || object
            .split_once(" - ")
            .is_some_and(|(_, tag)| tag.starts_with("DATABASE "))
}

fn is_timescaledb_extension(object: &str) -> bool {
    object == "EXTENSION - timescaledb"
}

/// How a dump's TOC was split into the lists `pg_restore -L` takes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// The dump creates the `timescaledb` extension.
    pub timescaledb: bool,
}

/// Reads the TOC in `toc` and writes three `pg_restore -L` lists: the
/// database entries (`create`), the `timescaledb` extension (`extension`),
/// and everything else (`rest`, the extension included: it is created
/// `IF NOT EXISTS`).
pub fn split(toc: &Path, create: &Path, extension: &Path, rest: &Path) -> Result<Split> {
    let input = BufReader::new(File::open(toc).ctx("opening", toc)?);
    let open = |p: &Path| File::create(p).ctx("creating", p).map(BufWriter::new);
    let (mut c, mut e, mut r) = (open(create)?, open(extension)?, open(rest)?);
    let mut found = Split::default();
    for line in input.lines() {
        let line = line.ctx("reading", toc)?;
        let Some(obj) = object(&line).filter(|_| !line.starts_with(';')) else {
            continue;
        };
        let out = if is_database_entry(obj) {
            (&mut c, create)
        } else {
            if is_timescaledb_extension(obj) {
                found.timescaledb = true;
                writeln!(e, "{line}").ctx("writing", extension)?;
            }
            (&mut r, rest)
        };
        writeln!(out.0, "{line}").ctx("writing", out.1)?;
    }
    for (w, p) in [(c, create), (e, extension), (r, rest)] {
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .ctx("writing", p)?;
    }
    Ok(found)
}

/// Whether a failed `pg_restore` (or SQL) says the connection failed, which
/// a later attempt may get past, rather than the server refusing the dump.
pub fn is_connection_failure(said: &str) -> bool {
    const SIGNS: &[&str] = &[
        "connection to server",
        "could not connect",
        "server closed the connection",
        "terminating connection",
        "connection refused",
        "no connection to the server",
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "timeout expired",
        "could not translate host name",
    ];
    let said = said.to_ascii_lowercase();
    SIGNS.iter().any(|s| said.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_entries_and_the_extension_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let toc = dir.path().join("toc");
        std::fs::write(
            &toc,
            ";\n; Archive created at 2026-12-01\n;\n\
             4724; 1262 16384 DATABASE - tsdb postgres\n\
             4725; 0 0 COMMENT - DATABASE tsdb postgres\n\
             4726; 0 0 ACL - DATABASE tsdb postgres\n\
             4727; 0 0 DATABASE PROPERTIES - tsdb postgres\n\
             2; 3079 16385 EXTENSION - timescaledb \n\
             4728; 0 0 COMMENT - EXTENSION timescaledb \n\
             276; 1259 17090 TABLE public readings postgres\n\
             280; 1259 17091 TABLE public DATABASE postgres\n\
             4500; 0 17090 TABLE DATA public readings postgres\n",
        )
        .unwrap();
        let (c, e, r) = (
            dir.path().join("c"),
            dir.path().join("e"),
            dir.path().join("r"),
        );
        let s = split(&toc, &c, &e, &r).unwrap();
        assert!(s.timescaledb);
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&c), 4);
        assert_eq!(lines(&e), 1);
        assert_eq!(lines(&r), 5);
        assert!(std::fs::read_to_string(&r)
            .unwrap()
            .contains("TABLE public DATABASE postgres"));
    }

    #[test]
    fn a_plain_database_is_not_timescaledb() {
        let dir = tempfile::tempdir().unwrap();
        let toc = dir.path().join("toc");
        std::fs::write(
            &toc,
            "5; 3079 16385 EXTENSION - timescaledb_toolkit \n\
             6; 1259 1 TABLE public t postgres\n",
        )
        .unwrap();
        let p = |n: &str| dir.path().join(n);
        assert!(!split(&toc, &p("c"), &p("e"), &p("r")).unwrap().timescaledb);
    }

    #[test]
    fn connection_failures_are_told_from_refusals() {
        assert!(is_connection_failure(
            "pg_restore: error: connection to server at \"127.0.0.1\", port 5432 failed: Connection refused"
        ));
        assert!(is_connection_failure(
            "FATAL: terminating connection due to administrator command"
        ));
        assert!(!is_connection_failure(
            "pg_restore: error: COPY failed for table \"_hyper_1_31_chunk\": ERROR: could not find hypertable with id 1"
        ));
    }
}
