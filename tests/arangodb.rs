//! ArangoDB dumps against a TEST DOUBLE of ArangoDB's HTTP API: no ArangoDB
//! server installs here (docs/ARCHITECTURE.md §9), so `FakeArango` below follows the
//! documented endpoints arangodump uses (batch create / prolong / delete,
//! inventory, dump with `x-arango-replication-checkmore` paging) and those
//! arangorestore uses (database, collection, index, import). It serves
//! real HTTP on 127.0.0.1 to the real binaries and records what it saw.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use lifeboat_tests::*;
use serde_json::{json, Value};

const PASSWORD: &str = "arango-test-pw";

#[derive(Default, Clone, Debug, PartialEq)]
struct Coll {
    params: Value,
    indexes: Vec<Value>,
    docs: BTreeMap<String, Value>,
}

#[derive(Default)]
struct State {
    dbs: BTreeMap<String, BTreeMap<String, Coll>>,
    /// batch id -> (database, prolong calls, deleted)
    batches: BTreeMap<String, (String, u32, bool)>,
    cursors: BTreeMap<(String, String), usize>,
    /// Documents per dump reply: small, so paging is exercised.
    chunk_docs: usize,
    dump_calls: usize,
    /// Drop this database once this many dump calls have been served.
    drop_after: Option<(String, usize)>,
    /// Collections in the order documents were imported into them.
    imports: Vec<String>,
}

struct FakeArango {
    port: u16,
    state: Arc<Mutex<State>>,
}

fn system_colls() -> BTreeMap<String, Coll> {
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
    fn start(dbs: BTreeMap<String, BTreeMap<String, Coll>>) -> FakeArango {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            dbs,
            chunk_docs: 2,
            ..Default::default()
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        FakeArango { port, state }
    }

    fn url(&self) -> String {
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
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("root:{PASSWORD}"))
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

fn coll(name: &str, kind: u64, docs: Vec<Value>, indexes: Vec<Value>) -> (String, Coll) {
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

/// Two databases: documents, edges between them, a unique index, a graph
/// definition, and a user.
fn sample() -> BTreeMap<String, BTreeMap<String, Coll>> {
    let mut system = system_colls();
    system.get_mut("_users").unwrap().docs.insert(
        "u1".into(),
        json!({ "_key": "u1", "user": "app", "active": true, "authData": { "simple": { "hash": "abc", "salt": "x", "method": "sha256" } } }),
    );
    let mut shop = system_colls();
    let customers: Vec<Value> = (0..7)
        .map(|i| json!({ "_key": format!("c{i}"), "_id": format!("customers/c{i}"), "email": format!("c{i}@example.com"), "name": format!("Kundin {i} ü") }))
        .collect();
    let products: Vec<Value> = (0..5)
        .map(|i| json!({ "_key": format!("p{i}"), "_id": format!("products/p{i}"), "price": i * 100 }))
        .collect();
    let bought: Vec<Value> = (0..6)
        .map(|i| json!({ "_key": format!("b{i}"), "_from": format!("customers/c{i}"), "_to": format!("products/p{}", i % 5), "qty": i }))
        .collect();
    for (n, c) in [
        coll("bought", 3, bought, vec![]),
        coll(
            "customers",
            2,
            customers,
            vec![
                json!({ "id": "customers/0", "type": "primary", "fields": ["_key"], "unique": true }),
                json!({ "id": "customers/7", "type": "persistent", "fields": ["email"], "unique": true, "sparse": false }),
            ],
        ),
        coll("products", 2, products, vec![]),
    ] {
        shop.insert(n, c);
    }
    shop.get_mut("_graphs").unwrap().docs.insert(
        "sales".into(),
        json!({ "_key": "sales", "edgeDefinitions": [{ "collection": "bought", "from": ["customers"], "to": ["products"] }], "orphanCollections": [] }),
    );
    let mut crm = system_colls();
    let (n, c) = coll(
        "leads",
        2,
        (0..4)
            .map(|i| json!({ "_key": format!("l{i}"), "score": i }))
            .collect(),
        vec![],
    );
    crm.insert(n, c);
    BTreeMap::from([
        ("_system".into(), system),
        ("shop".into(), shop),
        ("crm".into(), crm),
    ])
}

/// What a user compares: per database and collection, the type, the
/// non-primary indexes (type, fields, unique) and every document. Statistics
/// are server state, not data.
fn view(dbs: &BTreeMap<String, BTreeMap<String, Coll>>) -> Value {
    let mut out = serde_json::Map::new();
    for (db, colls) in dbs {
        let mut cs = serde_json::Map::new();
        for (name, c) in colls.iter().filter(|(n, _)| *n != "_statistics") {
            let idx: Vec<Value> = c
                .indexes
                .iter()
                .filter(|i| i["type"] != "primary")
                .map(|i| json!({ "type": i["type"], "fields": i["fields"], "unique": i["unique"] }))
                .collect();
            cs.insert(
                name.clone(),
                json!({ "type": c.params["type"], "indexes": idx, "docs": c.docs }),
            );
        }
        out.insert(db.clone(), Value::Object(cs));
    }
    Value::Object(out)
}

fn env(fake: &FakeArango, vol: &Path, backup: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("LIFEBOAT_SOURCE", "arangodb".into()),
        ("LIFEBOAT_PATHS", vol.display().to_string()),
        ("LIFEBOAT_TARGETS", format!("file://{}", backup.display())),
        ("LIFEBOAT_SCHEDULE", "0 0 1 1 *".into()),
        ("LIFEBOAT_ARANGODB_URL", fake.url()),
        ("ARANGO_ROOT_PASSWORD", PASSWORD.into()),
        ("HOSTNAME", "arango-0".into()),
    ]
}

#[test]
fn fake_arango_two_databases_round_trip_with_batch_protocol_and_edges_after_vertices() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    let original = FakeArango::start(sample());
    let e = env(&original, &vol, &backup);
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&e)).arg("backup-now"));
    {
        let s = original.state.lock().unwrap();
        assert_eq!(s.batches.len(), 3, "one batch per database");
        for (id, (db, prolonged, deleted)) in &s.batches {
            assert!(*deleted, "batch {id} of {db} was not deleted");
            assert!(*prolonged >= 1, "batch {id} of {db} was never kept alive");
        }
        // 7 customers at 2 per reply: paging followed checkmore.
        assert!(s.dump_calls >= 4 + 3 + 3 + 2, "{} dump calls", s.dump_calls);
    }
    let hist = history(&backup, "arango-0");
    let artifact = artifacts(&hist).pop().unwrap();
    let names = entry_names(&artifact);
    for want in [
        "arangodb/shop/dump.json",
        "arangodb/shop/customers.structure.json",
        "arangodb/shop/customers.data.json",
        "arangodb/shop/bought.data.json",
        "arangodb/shop/_graphs.data.json",
        "arangodb/_system/_users.data.json",
        "arangodb/crm/leads.data.json",
    ] {
        assert!(
            names.contains(&want.to_string()),
            "{want} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.contains("_statistics")),
        "{names:?}"
    );

    // A new pod: an empty server; the init container stages, the sidecar loads.
    let fresh = FakeArango::start(BTreeMap::from([("_system".into(), system_colls())]));
    let e = env(&fresh, &vol, &backup);
    let out = run_ok(&mut lifeboat("lifeboat-restore", &pairs(&e)));
    assert!(stderr(&out).contains("staged"), "{}", stderr(&out));
    load_staged_dump(
        lifeboat("lifeboat-sidecar", &pairs(&e)),
        &tmp.path().join("sidecar.log"),
    );

    let restored = fresh.state.lock().unwrap();
    assert_eq!(
        view(&restored.dbs),
        view(&original.state.lock().unwrap().dbs)
    );
    let pos = |c: &str| restored.imports.iter().position(|i| i == c).unwrap();
    assert!(
        pos("bought") > pos("customers") && pos("bought") > pos("products"),
        "{:?}",
        restored.imports
    );
}

#[test]
fn fake_arango_server_down_wrong_password_and_a_database_dropped_mid_dump_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    let fake = FakeArango::start(sample());
    let hist = history(&backup, "arango-0");
    let fail = |extra: &[(&'static str, String)], needle: &str| {
        let e = with_env(&env(&fake, &vol, &backup), extra);
        fails_with(
            lifeboat("lifeboat-sidecar", &pairs(&e)).arg("backup-now"),
            1,
            needle,
        );
        assert!(artifacts(&hist).is_empty());
    };
    fail(
        &[(
            "LIFEBOAT_ARANGODB_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )],
        "is ArangoDB running? check LIFEBOAT_ARANGODB_URL",
    );
    fail(
        &[("ARANGO_ROOT_PASSWORD", "nope".into())],
        "check LIFEBOAT_ARANGODB_USER",
    );
    fake.state.lock().unwrap().drop_after = Some(("shop".into(), 3));
    fail(&[], "deleted during the dump");
    let s = fake.state.lock().unwrap();
    assert!(
        s.batches.values().all(|b| b.2),
        "every batch is released, even on failure"
    );
}
