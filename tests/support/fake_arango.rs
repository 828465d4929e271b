//! A TEST DOUBLE of ArangoDB's HTTP API: no ArangoDB server installs here
//! (docs/ARCHITECTURE.md §9), so this follows the documented endpoints
//! arangodump uses (batch create / prolong / delete, inventory, dump with
//! `x-arango-replication-checkmore` paging) and those arangorestore uses
//! (database, collection, index, import), in memory, over real HTTP. It
//! records what it saw for `tests/arangodb.rs`, and is the e2e suite's
//! ArangoDB as the `arangodb-standin` binary.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::{percent_decode, read_request};

#[derive(Default, Clone, Debug, PartialEq)]
pub struct Coll {
    pub params: Value,
    pub indexes: Vec<Value>,
    pub docs: BTreeMap<String, Value>,
}

#[derive(Default)]
pub struct State {
    pub dbs: BTreeMap<String, BTreeMap<String, Coll>>,
    /// batch id -> (database, prolong calls, deleted)
    pub batches: BTreeMap<String, (String, u32, bool)>,
    cursors: BTreeMap<(String, String), usize>,
    /// Documents per dump reply.
    pub chunk_docs: usize,
    pub dump_calls: usize,
    /// Drop this database once this many dump calls have been served.
    pub drop_after: Option<(String, usize)>,
    /// Collections in the order documents were imported into them.
    pub imports: Vec<String>,
    /// `root`'s password (Basic auth).
    password: String,
}

pub struct FakeArango {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

pub fn system_colls() -> BTreeMap<String, Coll> {
    let mut m = BTreeMap::new();
    for name in ["_users", "_graphs", "_statistics"] {
        m.insert(
            name.to_string(),
            Coll {
                params: json!({ "name": name, "type": 2, "isSystem": true }),
                ..Default::default()
            },
        );
    }
    m
}

impl FakeArango {
    /// On a free port of 127.0.0.1, `root` with `password`, two documents
    /// per dump reply so that paging is exercised.
    pub fn start(dbs: BTreeMap<String, BTreeMap<String, Coll>>, password: &str) -> FakeArango {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let state = State {
            dbs,
            chunk_docs: 2,
            password: password.into(),
            ..Default::default()
        };
        FakeArango::serve_on(listener, state)
    }

    /// An empty server (`_system` only) on `listener`, as a new ArangoDB
    /// is: the e2e suite's stand-in image (`arangodb-standin`).
    pub fn empty_on(listener: TcpListener, password: &str, chunk_docs: usize) -> FakeArango {
        let state = State {
            dbs: BTreeMap::from([("_system".into(), system_colls())]),
            chunk_docs,
            password: password.into(),
            ..Default::default()
        };
        FakeArango::serve_on(listener, state)
    }

    fn serve_on(listener: TcpListener, state: State) -> FakeArango {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(state));
        crate::serve_connections(listener, state.clone(), serve);
        FakeArango { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let Some(req) = read_request(&mut BufReader::new(conn.try_clone().unwrap())) else {
        return;
    };
    let segs: Vec<String> = req
        .path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    use base64::Engine;
    let password = state.lock().unwrap().password.clone();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("root:{password}"))
    );
    let (status, headers, out) = if req.header("authorization") != expected {
        (401, vec![], json!({ "error": true, "code": 401, "errorMessage": "not authorized to execute this request" }).to_string())
    } else {
        handle(
            &mut state.lock().unwrap(),
            &req.method,
            &segs,
            &req.query,
            &req.body,
        )
    };
    let mut w = conn;
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        out.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(out.as_bytes());
}

type Reply = (u16, Vec<(&'static str, String)>, String);

fn err(code: u16, msg: &str) -> Reply {
    (
        code,
        vec![],
        json!({ "error": true, "code": code, "errorMessage": msg }).to_string(),
    )
}

fn handle(
    s: &mut State,
    method: &str,
    segs: &[String],
    q: &BTreeMap<String, String>,
    body: &[u8],
) -> Reply {
    let ok = |v: Value| -> Reply { (200, vec![], v.to_string()) };
    let (db, rest): (String, Vec<&str>) = match segs {
        [first, name, rest @ ..] if first == "_db" => {
            (name.clone(), rest.iter().map(String::as_str).collect())
        }
        rest => ("_system".into(), rest.iter().map(String::as_str).collect()),
    };
    if !s.dbs.contains_key(&db) {
        return err(404, "database not found");
    }
    let json_body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method, rest.as_slice()) {
        ("GET", ["_api", "version"]) => {
            ok(json!({ "server": "arango", "version": "3.11.99-test-double" }))
        }
        ("GET", ["_api", "database"]) => ok(json!({ "result": s.dbs.keys().collect::<Vec<_>>() })),
        ("POST", ["_api", "database"]) => {
            let name = json_body["name"].as_str().unwrap().to_string();
            if s.dbs.contains_key(&name) {
                return err(409, "duplicate database name");
            }
            s.dbs.insert(name, system_colls());
            (201, vec![], json!({ "result": true }).to_string())
        }
        ("POST", ["_api", "replication", "batch"]) => {
            assert!(
                json_body["ttl"].as_u64().unwrap() > 0,
                "a batch needs a ttl"
            );
            let id = (s.batches.len() + 1000).to_string();
            s.batches.insert(id.clone(), (db.clone(), 0, false));
            ok(json!({ "id": id, "lastTick": "12345" }))
        }
        ("PUT", ["_api", "replication", "batch", id]) => match s.batches.get_mut(*id) {
            Some(b) if !b.2 => {
                b.1 += 1;
                (204, vec![], String::new())
            }
            _ => err(404, "batch not found"),
        },
        ("DELETE", ["_api", "replication", "batch", id]) => match s.batches.get_mut(*id) {
            Some(b) if !b.2 => {
                b.2 = true;
                (204, vec![], String::new())
            }
            _ => err(404, "batch not found"),
        },
        ("GET", ["_api", "replication", "inventory"]) => {
            assert!(
                s.batches.contains_key(&q["batchId"]),
                "inventory without a batch"
            );
            let colls: Vec<Value> = s.dbs[&db]
                .values()
                .map(|c| json!({ "parameters": c.params, "indexes": c.indexes }))
                .collect();
            ok(
                json!({ "collections": colls, "views": [], "properties": { "name": db }, "tick": "12345" }),
            )
        }
        ("GET", ["_api", "replication", "dump"]) => {
            let batch = &q["batchId"];
            assert!(
                matches!(s.batches.get(batch), Some((d, _, false)) if *d == db),
                "dump without a live batch"
            );
            s.dump_calls += 1;
            if let Some((victim, after)) = s.drop_after.clone() {
                if s.dump_calls > after {
                    s.dbs.remove(&victim);
                    // A server drops a database's batches with it.
                    for b in s.batches.values_mut().filter(|b| b.0 == victim) {
                        b.2 = true;
                    }
                    return err(404, "database not found");
                }
            }
            let name = q["collection"].clone();
            let Some(c) = s.dbs[&db].get(&name).cloned() else {
                return err(404, "collection or view not found");
            };
            let pos = s.cursors.entry((batch.clone(), name)).or_insert(0);
            let docs: Vec<&Value> = c.docs.values().skip(*pos).take(s.chunk_docs).collect();
            *pos += docs.len();
            if docs.is_empty() {
                return (
                    204,
                    vec![
                        ("x-arango-replication-checkmore", "false".into()),
                        ("x-arango-replication-lastincluded", "0".into()),
                    ],
                    String::new(),
                );
            }
            let more = *pos < c.docs.len();
            let kind = if c.params["type"] == 3 { 2301 } else { 2300 };
            let text: String = docs
                .iter()
                .map(|d| format!("{}\n", json!({ "type": kind, "data": d })))
                .collect();
            (
                200,
                vec![
                    ("x-arango-replication-checkmore", more.to_string()),
                    ("x-arango-replication-lastincluded", "12345".into()),
                ],
                text,
            )
        }
        ("POST", ["_api", "collection"]) => {
            let name = json_body["name"].as_str().unwrap().to_string();
            let colls = s.dbs.get_mut(&db).unwrap();
            if colls.contains_key(&name) {
                return err(409, "duplicate name");
            }
            colls.insert(
                name,
                Coll {
                    params: json_body.clone(),
                    ..Default::default()
                },
            );
            ok(json_body)
        }
        ("POST", ["_api", "index"]) => {
            let Some(c) = s.dbs.get_mut(&db).unwrap().get_mut(&q["collection"]) else {
                return err(404, "collection not found");
            };
            if c.indexes
                .iter()
                .any(|i| i["type"] == json_body["type"] && i["fields"] == json_body["fields"])
            {
                return ok(json!({ "isNewlyCreated": false }));
            }
            let mut idx = json_body.clone();
            idx["id"] = json!(format!("{}/{}", q["collection"], c.indexes.len() + 1));
            c.indexes.push(idx);
            (201, vec![], json!({ "isNewlyCreated": true }).to_string())
        }
        ("POST", ["_api", "import"]) => {
            assert_eq!(q.get("onDuplicate").map(String::as_str), Some("replace"));
            let name = q["collection"].clone();
            s.imports.push(name.clone());
            let Some(c) = s.dbs.get_mut(&db).unwrap().get_mut(&name) else {
                return err(404, "collection not found");
            };
            let mut created = 0;
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let d: Value = serde_json::from_slice(line).unwrap();
                let key = d["_key"].as_str().unwrap().to_string();
                c.docs.insert(key, d);
                created += 1;
            }
            (201, vec![], json!({ "error": false, "created": created, "errors": 0, "empty": 0, "updated": 0, "ignored": 0 }).to_string())
        }
        ("GET", ["_api", "collection", name, "count"]) => match s.dbs[&db].get(*name) {
            Some(c) => ok(json!({ "count": c.docs.len() })),
            None => err(404, "collection not found"),
        },
        _ => err(
            501,
            &format!("the test double does not implement {method} {rest:?}"),
        ),
    }
}

pub fn coll(name: &str, kind: u64, docs: Vec<Value>, indexes: Vec<Value>) -> (String, Coll) {
    let docs = docs
        .into_iter()
        .map(|d| (d["_key"].as_str().unwrap().to_string(), d))
        .collect();
    let params = json!({ "name": name, "type": kind, "keyOptions": { "type": "traditional", "allowUserKeys": true }, "waitForSync": false });
    (
        name.to_string(),
        Coll {
            params,
            indexes,
            docs,
        },
    )
}
