//! `src/store/schema.rs` against what the migrations really build: every table, column,
//! SQL type, nullability and primary key, on the backend under test. Diesel trusts
//! `schema.rs` blindly, so a column added to a migration and forgotten there (or the
//! reverse, or a NOT NULL that one side lacks) would otherwise surface only as a runtime
//! error on the first query that touches it, and perhaps on one backend only.

use std::collections::{BTreeMap, BTreeSet};

use carevault::store::{Backend, DbConnection, run_migrations};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer, Text};

use crate::helpers::*;

const SCHEMA_RS: &str = include_str!("../../src/store/schema.rs");

/// A column as one side describes it: its type (the diesel type on the `schema.rs` side,
/// the SQL type the database reports on the other) and whether it may hold NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    ty: String,
    nullable: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Table {
    columns: BTreeMap<String, Column>,
    primary_key: BTreeSet<String>,
}

type Tables = BTreeMap<String, Table>;

/// The tables of `diesel::table!` blocks: `name (pk, ...) { column -> Type, ... }`, with
/// `Nullable<T>`, `#[sql_name = "..."]` and `r#` names understood.
fn parse_schema_rs(text: &str) -> Tables {
    let mut tables = Tables::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("diesel::table!") {
            continue;
        }
        let header = lines.by_ref().find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with("#[")).expect("table! header");
        let head = header.strip_suffix('{').expect("table! header ends with {").trim();
        let (name, primary_key) = match head.split_once('(') {
            Some((name, keys)) => (name.trim(), keys.trim_end_matches(')').split(',').map(|k| unraw(k.trim())).collect()),
            // diesel's default primary key
            None => (head, BTreeSet::from(["id".to_owned()])),
        };
        let mut table = Table { primary_key, ..Table::default() };
        let mut sql_name = None;
        for line in lines.by_ref() {
            if line == "}" {
                break;
            }
            if let Some(rest) = line.strip_prefix("#[sql_name = \"") {
                sql_name = rest.split('"').next().map(str::to_owned);
                continue;
            }
            if line.is_empty() || line.starts_with("//") || line.starts_with("#[") {
                continue;
            }
            let (column, ty) = line.trim_end_matches(',').split_once("->").unwrap_or_else(|| panic!("cannot read column line `{line}`"));
            let ty = ty.trim();
            let (ty, nullable) = match ty.strip_prefix("Nullable<").and_then(|t| t.strip_suffix('>')) {
                Some(inner) => (inner, true),
                None => (ty, false),
            };
            let ty = ty.rsplit("::").next().unwrap_or(ty).to_owned();
            let column = sql_name.take().unwrap_or_else(|| unraw(column.trim()));
            table.columns.insert(column, Column { ty, nullable });
        }
        tables.insert(unraw(name), table);
    }
    tables
}

fn unraw(name: &str) -> String {
    name.trim_start_matches("r#").to_owned()
}

/// The SQL types a backend may report for a diesel type (SQLite gives the declared type as
/// written, compared in upper case; PostgreSQL gives `information_schema.data_type`).
/// Empty: a diesel type this check does not know yet; add it here.
fn sql_types(diesel_type: &str, backend: Backend) -> &'static [&'static str] {
    match (diesel_type, backend) {
        ("Text", Backend::Sqlite) => &["TEXT"],
        ("Text", Backend::Postgres) => &["text"],
        ("SmallInt", Backend::Sqlite) => &["SMALLINT", "INT2"],
        ("SmallInt", Backend::Postgres) => &["smallint"],
        ("Integer", Backend::Sqlite) => &["INTEGER", "INT", "INT4"],
        ("Integer", Backend::Postgres) => &["integer"],
        ("BigInt", Backend::Sqlite) => &["BIGINT", "INT8"],
        ("BigInt", Backend::Postgres) => &["bigint"],
        ("Timestamp", Backend::Sqlite) => &["TIMESTAMP", "DATETIME"],
        ("Timestamp", Backend::Postgres) => &["timestamp without time zone"],
        ("Bool", Backend::Sqlite) => &["BOOLEAN", "BOOL"],
        ("Bool", Backend::Postgres) => &["boolean"],
        ("Binary", Backend::Sqlite) => &["BLOB", "BINARY"],
        ("Binary", Backend::Postgres) => &["bytea"],
        ("Double", Backend::Sqlite) => &["DOUBLE", "REAL", "DOUBLE PRECISION"],
        ("Double", Backend::Postgres) => &["double precision"],
        _ => &[],
    }
}

fn shown(column: &Column) -> String {
    format!("{}{}", column.ty, if column.nullable { " NULL" } else { " NOT NULL" })
}

/// Every difference between `schema.rs` (`declared`) and the migrated database (`actual`),
/// one line each; empty when they agree.
fn compare(declared: &Tables, actual: &Tables, backend: Backend) -> Vec<String> {
    let mut diff = Vec::new();
    for name in actual.keys().filter(|t| !declared.contains_key(*t)) {
        diff.push(format!("table `{name}`: created by the migrations, missing from src/store/schema.rs"));
    }
    for (name, want) in declared {
        let Some(got) = actual.get(name) else {
            diff.push(format!("table `{name}`: declared in src/store/schema.rs, not created by the migrations"));
            continue;
        };
        for (column, c) in got.columns.iter().filter(|(c, _)| !want.columns.contains_key(*c)) {
            diff.push(format!("`{name}.{column}`: in the migrations ({}), missing from src/store/schema.rs", shown(c)));
        }
        for (column, w) in &want.columns {
            let Some(g) = got.columns.get(column) else {
                diff.push(format!("`{name}.{column}`: in src/store/schema.rs ({}), not in the migrations", shown(w)));
                continue;
            };
            let accepted = sql_types(&w.ty, backend);
            let reported = if backend == Backend::Sqlite { g.ty.to_uppercase() } else { g.ty.clone() };
            if accepted.is_empty() {
                diff.push(format!("`{name}.{column}`: diesel type {} has no {backend:?} mapping in tests/api/schema.rs", w.ty));
            } else if !accepted.contains(&reported.as_str()) {
                diff.push(format!(
                    "`{name}.{column}`: src/store/schema.rs says {}, the migrations make it {} (expected {})",
                    w.ty,
                    g.ty,
                    accepted.join(" or ")
                ));
            }
            if w.nullable != g.nullable {
                diff.push(format!("`{name}.{column}`: src/store/schema.rs says {}, the migrations make it {}", shown(w), shown(g)));
            }
        }
        if want.primary_key != got.primary_key {
            diff.push(format!(
                "table `{name}`: src/store/schema.rs has primary key {:?}, the migrations {:?}",
                want.primary_key, got.primary_key
            ));
        }
    }
    diff
}

/// Diesel's own bookkeeping, not part of `schema.rs`.
const MIGRATIONS_TABLE: &str = "__diesel_schema_migrations";

#[derive(QueryableByName)]
struct SqliteColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    column_type: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
    #[diesel(sql_type = Integer)]
    pk: i32,
}

fn sqlite_tables(conn: &mut SqliteConnection) -> Tables {
    let rows: Vec<SqliteColumn> = diesel::sql_query(
        "SELECT m.name AS table_name, p.name AS column_name, p.type AS column_type, p.\"notnull\" AS not_null, p.pk AS pk \
         FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name <> ? \
         ORDER BY m.name, p.cid",
    )
    .bind::<Text, _>(MIGRATIONS_TABLE)
    .load(conn)
    .expect("pragma_table_info");
    let mut tables = Tables::new();
    let pk_columns: BTreeMap<&str, usize> = rows.iter().filter(|r| r.pk > 0).fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.table_name.as_str()).or_default() += 1;
        m
    });
    for r in &rows {
        // SQLite lets a PRIMARY KEY column hold NULL unless it is declared NOT NULL or is
        // the rowid alias (a lone INTEGER PRIMARY KEY): only NOT NULL counts here.
        let rowid = r.pk > 0 && pk_columns.get(r.table_name.as_str()) == Some(&1) && r.column_type.eq_ignore_ascii_case("INTEGER");
        let table = tables.entry(r.table_name.clone()).or_default();
        table.columns.insert(r.column_name.clone(), Column { ty: r.column_type.clone(), nullable: r.not_null == 0 && !rowid });
        if r.pk > 0 {
            table.primary_key.insert(r.column_name.clone());
        }
    }
    tables
}

#[derive(QueryableByName)]
struct PgColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    column_type: String,
    #[diesel(sql_type = Bool)]
    nullable: bool,
}

#[derive(QueryableByName)]
struct PgKey {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
}

fn postgres_tables(conn: &mut PgConnection, schema: &str) -> Tables {
    let columns: Vec<PgColumn> = diesel::sql_query(
        "SELECT c.table_name::text AS table_name, c.column_name::text AS column_name, \
                c.data_type::text AS column_type, c.is_nullable = 'YES' AS nullable \
         FROM information_schema.columns AS c \
         JOIN information_schema.tables AS t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE' AND c.table_name <> $2 \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .bind::<Text, _>(schema)
    .bind::<Text, _>(MIGRATIONS_TABLE)
    .load(conn)
    .expect("information_schema.columns");
    let keys: Vec<PgKey> = diesel::sql_query(
        "SELECT k.table_name::text AS table_name, k.column_name::text AS column_name \
         FROM information_schema.table_constraints AS tc \
         JOIN information_schema.key_column_usage AS k \
           ON k.constraint_schema = tc.constraint_schema AND k.constraint_name = tc.constraint_name AND k.table_name = tc.table_name \
         WHERE tc.table_schema = $1 AND tc.constraint_type = 'PRIMARY KEY'",
    )
    .bind::<Text, _>(schema)
    .load(conn)
    .expect("information_schema.key_column_usage");
    let mut tables = Tables::new();
    for c in columns {
        tables.entry(c.table_name).or_default().columns.insert(c.column_name, Column { ty: c.column_type, nullable: c.nullable });
    }
    for k in keys {
        if let Some(table) = tables.get_mut(&k.table_name) {
            table.primary_key.insert(k.column_name);
        }
    }
    tables
}

fn assert_agrees(actual: &Tables, backend: Backend) {
    let diff = compare(&parse_schema_rs(SCHEMA_RS), actual, backend);
    assert!(diff.is_empty(), "src/store/schema.rs does not match the {backend:?} migrations:\n  {}", diff.join("\n  "));
}

#[tokio::test]
async fn schema_rs_matches_what_the_migrations_build() {
    // The server applies the real migrations to its fresh database as it starts.
    let app = spawn_app().await;
    match &app.db {
        TestDb::Sqlite(path) => {
            let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open the test database");
            assert_agrees(&sqlite_tables(&mut conn), Backend::Sqlite);
        }
        TestDb::Postgres { admin_url, schema } => {
            let mut conn = PgConnection::establish(admin_url).expect("connect to test PostgreSQL");
            let tables = postgres_tables(&mut conn, schema);
            assert!(tables.contains_key("resources"), "no tables found in schema {schema}");
            assert_agrees(&tables, Backend::Postgres);
        }
    }
}

/// The SQLite migrations on a fresh in-memory database, then `extra` SQL.
fn migrated_sqlite(extra: &str) -> Tables {
    let mut conn = DbConnection::Sqlite(SqliteConnection::establish(":memory:").unwrap());
    run_migrations(&mut conn).unwrap();
    let DbConnection::Sqlite(mut sqlite) = conn else { unreachable!() };
    diesel::connection::SimpleConnection::batch_execute(&mut sqlite, extra).unwrap();
    sqlite_tables(&mut sqlite)
}

#[test]
fn a_column_added_to_a_migration_but_not_to_schema_rs_fails_the_check() {
    assert_agrees(&migrated_sqlite(""), Backend::Sqlite);
    let actual = migrated_sqlite("ALTER TABLE change_log ADD COLUMN zz_origin TEXT");
    let diff = compare(&parse_schema_rs(SCHEMA_RS), &actual, Backend::Sqlite);
    assert_eq!(diff, ["`change_log.zz_origin`: in the migrations (TEXT NULL), missing from src/store/schema.rs"]);
}

#[test]
fn a_column_added_to_schema_rs_but_not_to_a_migration_fails_the_check() {
    let edited = SCHEMA_RS.replacen("        op -> Text,\n", "        op -> Text,\n        zz_origin -> Nullable<Text>,\n", 1);
    assert_ne!(edited, SCHEMA_RS, "the fixture edit must apply");
    let diff = compare(&parse_schema_rs(&edited), &migrated_sqlite(""), Backend::Sqlite);
    assert_eq!(diff, ["`change_log.zz_origin`: in src/store/schema.rs (Text NULL), not in the migrations"]);
}

const FIXTURE: &str = r#"
diesel::table! {
    notes (tenant, id) {
        tenant -> Text,
        id -> Text,
        #[sql_name = "type"]
        kind -> SmallInt,
        r#body -> Nullable<diesel::sql_types::Text>,
        written_at -> Timestamp,
    }
}

diesel::table! {
    tags {
        id -> BigInt,
    }
}
"#;

fn column(ty: &str, nullable: bool) -> Column {
    Column { ty: ty.to_owned(), nullable }
}

/// What PostgreSQL would report for FIXTURE.
fn fixture_database() -> Tables {
    let notes = Table {
        columns: [
            ("tenant", column("text", false)),
            ("id", column("text", false)),
            ("type", column("smallint", false)),
            ("body", column("text", true)),
            ("written_at", column("timestamp without time zone", false)),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect(),
        primary_key: ["tenant", "id"].into_iter().map(str::to_owned).collect(),
    };
    let tags = Table { columns: [("id".to_owned(), column("bigint", false))].into(), primary_key: ["id".to_owned()].into() };
    [("notes".to_owned(), notes), ("tags".to_owned(), tags)].into()
}

#[test]
fn the_comparison_names_each_difference() {
    let declared = parse_schema_rs(FIXTURE);
    assert_eq!(declared["notes"].columns["type"], column("SmallInt", false));
    assert_eq!(declared["notes"].columns["body"], column("Text", true));
    assert_eq!(declared["tags"].primary_key, BTreeSet::from(["id".to_owned()]));
    assert_eq!(compare(&declared, &fixture_database(), Backend::Postgres), Vec::<String>::new());

    let mut db = fixture_database();
    let notes = db.get_mut("notes").unwrap();
    notes.columns.insert("zz_new".into(), column("bigint", true));
    notes.columns.remove("written_at");
    notes.columns.insert("body".into(), column("text", false));
    notes.columns.insert("type".into(), column("integer", false));
    notes.primary_key.remove("tenant");
    db.remove("tags");
    db.insert("zz_audit".into(), Table::default());
    assert_eq!(
        compare(&declared, &db, Backend::Postgres),
        [
            "table `zz_audit`: created by the migrations, missing from src/store/schema.rs",
            "`notes.zz_new`: in the migrations (bigint NULL), missing from src/store/schema.rs",
            "`notes.body`: src/store/schema.rs says Text NULL, the migrations make it text NOT NULL",
            "`notes.type`: src/store/schema.rs says SmallInt, the migrations make it integer (expected smallint)",
            "`notes.written_at`: in src/store/schema.rs (Timestamp NOT NULL), not in the migrations",
            "table `notes`: src/store/schema.rs has primary key {\"id\", \"tenant\"}, the migrations {\"id\"}",
            "table `tags`: declared in src/store/schema.rs, not created by the migrations",
        ]
    );
}

#[test]
fn a_diesel_type_without_a_mapping_is_reported_not_passed() {
    let declared = parse_schema_rs("diesel::table! {\n    t (id) {\n        id -> Uuid,\n    }\n}\n");
    let actual: Tables =
        [("t".to_owned(), Table { columns: [("id".to_owned(), column("uuid", false))].into(), primary_key: ["id".to_owned()].into() })]
            .into();
    assert_eq!(compare(&declared, &actual, Backend::Postgres), ["`t.id`: diesel type Uuid has no Postgres mapping in tests/api/schema.rs"]);
}
