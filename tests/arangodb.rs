//! ArangoDB dumps against a TEST DOUBLE of ArangoDB's HTTP API
//! (`lifeboat_tests::fake_arango`: no ArangoDB server installs here). It
//! serves real HTTP on 127.0.0.1 to the real binaries and records what it
//! saw.

use std::collections::BTreeMap;
use std::path::Path;

use lifeboat_tests::fake_arango::{coll, system_colls, Coll, FakeArango};
use lifeboat_tests::*;
use serde_json::{json, Value};

const PASSWORD: &str = "arango-test-pw";

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
    let original = FakeArango::start(sample(), PASSWORD);
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
    let fresh = FakeArango::start(
        BTreeMap::from([("_system".into(), system_colls())]),
        PASSWORD,
    );
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
    let fake = FakeArango::start(sample(), PASSWORD);
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
