//! Roles for the logical PostgreSQL mode: `pg_dump` leaves them out, yet a
//! database owned by `app` does not load into a server without `app`.
//!
//! Written as plain SQL (`postgres/roles.sql`, runnable with `psql -f`) in
//! which every statement can run twice: a role that exists is altered, not
//! created again. Built-in roles and the role we connect as are left out:
//! the new server's admin password comes from its own Secret, and restoring
//! an old one would lock the sidecar out.

use tokio_postgres::Client;

use super::postgres::PgConn;
use crate::Result;

/// Roles with smaller oids are created by `initdb` (FirstNormalObjectId).
const FIRST_USER_OID: u32 = 16384;

pub struct Roles {
    pub sql: String,
    pub count: usize,
    /// Whether password hashes could be read (they need a superuser).
    pub with_passwords: bool,
}

pub async fn dump(client: &Client, conn: &PgConn) -> Result<Roles> {
    let columns = "rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, \
                   rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil::text";
    let filter = format!("WHERE oid >= {FIRST_USER_OID} AND rolname <> current_user ORDER BY 1");
    let (rows, with_passwords) = match client
        .query(
            &format!("SELECT {columns}, rolpassword FROM pg_authid {filter}"),
            &[],
        )
        .await
    {
        Ok(rows) => (rows, true),
        // pg_authid is for superusers; pg_roles shows the same without hashes.
        Err(_) => (
            client
                .query(
                    &format!("SELECT {columns}, NULL::text FROM pg_roles {filter}"),
                    &[],
                )
                .await
                .map_err(|e| conn.error(e))?,
            false,
        ),
    };
    let mut sql = String::from(
        "-- Roles written by lifeboat; every statement may run again.\n\
         SET standard_conforming_strings = on;\n",
    );
    for r in &rows {
        let name: String = r.get(0);
        let flag = |i: usize, yes: &str| {
            if r.get::<_, bool>(i) {
                yes.to_string()
            } else {
                format!("NO{yes}")
            }
        };
        let ident = quote_ident(&name);
        sql.push_str(&create_if_missing(&ident));
        sql.push_str(&format!(
            "ALTER ROLE {ident} WITH {} {} {} {} {} {} {} CONNECTION LIMIT {}",
            flag(1, "SUPERUSER"),
            flag(2, "INHERIT"),
            flag(3, "CREATEROLE"),
            flag(4, "CREATEDB"),
            flag(5, "LOGIN"),
            flag(6, "REPLICATION"),
            flag(7, "BYPASSRLS"),
            r.get::<_, i32>(8),
        ));
        if let Some(until) = r.get::<_, Option<String>>(9) {
            sql.push_str(&format!(" VALID UNTIL {}", quote_literal(&until)));
        }
        if let Some(pw) = r.get::<_, Option<String>>(10) {
            sql.push_str(&format!(" PASSWORD {}", quote_literal(&pw)));
        }
        sql.push_str(";\n");
    }
    let members = client
        .query(
            &format!(
                "SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members a \
                 JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member \
                 WHERE a.member >= {FIRST_USER_OID} AND m.rolname <> current_user ORDER BY 2, 1"
            ),
            &[],
        )
        .await
        .map_err(|e| conn.error(e))?;
    for m in &members {
        let (role, member, admin): (String, String, bool) = (m.get(0), m.get(1), m.get(2));
        sql.push_str(&format!(
            "GRANT {} TO {}{};\n",
            quote_ident(&role),
            quote_ident(&member),
            if admin { " WITH ADMIN OPTION" } else { "" }
        ));
    }
    Ok(Roles {
        sql,
        count: rows.len(),
        with_passwords,
    })
}

/// `CREATE ROLE` that does nothing when the role exists.
fn create_if_missing(ident: &str) -> String {
    // The dollar-quote tag must not occur in the body, whatever the name.
    let mut tag = String::from("$lifeboat$");
    while ident.contains(&tag) {
        tag.insert(1, 'x');
    }
    format!(
        "DO {tag} BEGIN CREATE ROLE {ident}; EXCEPTION WHEN duplicate_object THEN NULL; END {tag};\n"
    )
}

/// `"name"` with inner quotes doubled: safe for any name.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` for `standard_conforming_strings = on`.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a "b""#), r#""a ""b""""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        let s = create_if_missing(&quote_ident("x$lifeboat$y"));
        assert!(s.starts_with("DO $xlifeboat$ BEGIN"), "{s}");
    }
}
