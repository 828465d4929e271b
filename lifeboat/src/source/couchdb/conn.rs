//! Where the CouchDB source's server is and what its dump is called.

use crate::http::{Endpoint, Kind};

/// The folder inside the tar (and the staged dump) holding this source's files.
pub const DUMP_DIR: &str = "couchdb";
pub const DEFAULT_URL: &str = "http://127.0.0.1:5984";
/// CouchDB's HTTP API, from `LIFEBOAT_COUCHDB_URL` and `COUCHDB_USER` /
/// `COUCHDB_PASSWORD` (the official image's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouchConn(pub Endpoint);

const KIND: Kind = Kind {
    name: "CouchDB",
    default_url: DEFAULT_URL,
    unreachable_hint: "is CouchDB running? check LIFEBOAT_COUCHDB_URL",
    auth_hint:
        "check COUCHDB_USER and COUCHDB_PASSWORD / COUCHDB_PASSWORD_FILE; backups need an admin",
    reason_fields: &["error", "reason"],
};

impl CouchConn {
    pub fn new(
        url: Option<&str>,
        user: Option<&str>,
        password: Option<&str>,
    ) -> std::result::Result<Self, String> {
        Endpoint::new(KIND, url, user, password).map(CouchConn)
    }
}

impl std::ops::Deref for CouchConn {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.0
    }
}
