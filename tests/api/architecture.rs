//! The module arrows of ARCHITECTURE.md, enforced: its module table's "may use" column is
//! the rule, read from the document itself, so the document and the check cannot drift
//! apart. A `crate::x` path anywhere in a module's files counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `module → modules it may use`, from the table in ARCHITECTURE.md: rows whose first cell
/// is one backticked module name; "nothing of the crate" allows none. Rows naming several
/// modules (the composition edge) are not checked.
fn rules(architecture: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for line in architecture.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [first, .., last] = cells.as_slice() else { continue };
        if first.matches('`').count() != 2 {
            continue;
        }
        let module = first.trim_matches('`').to_owned();
        let allowed = if *last == "nothing of the crate" { Vec::new() } else { last.split(',').map(|m| m.trim().to_owned()).collect() };
        out.insert(module, allowed);
    }
    out
}

/// Every `crate::x` a file names that its module may not use.
fn violations(module: &str, allowed: &[String], file: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let used: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if used != module && !allowed.contains(&used) {
            found.push(format!("{file}: {module} uses crate::{used}"));
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn architecture() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap()
}

#[test]
fn modules_only_use_what_their_layer_allows() {
    let rules = rules(&architecture());
    for expected in ["domain", "crypto", "authz", "auth", "fhir", "store", "ledger", "service", "api"] {
        assert!(rules.contains_key(expected), "ARCHITECTURE.md has no row for {expected}: {rules:?}");
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (module, allowed) in &rules {
        let mut paths = Vec::new();
        files(&src.join(module), &mut paths);
        assert!(!paths.is_empty(), "module {module} has no files");
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            found.extend(violations(module, allowed, &path.strip_prefix(&src).unwrap().display().to_string(), &text));
        }
    }
    assert!(found.is_empty(), "layering violations:\n{}", found.join("\n"));
}

#[test]
fn a_forbidden_import_is_caught() {
    let rules = rules(&architecture());
    // The API may not reach the store, the ledger or the keys: a handler that did would
    // bypass the use cases' authorization and audit.
    let fixture = "use crate::service::Caller;\nuse crate::store::resources::find_current;\nfn f() { crate::ledger::log::checkpoint(); }\n";
    let found = violations("api", &rules["api"], "api/fixture.rs", fixture);
    assert_eq!(found, ["api/fixture.rs: api uses crate::store", "api/fixture.rs: api uses crate::ledger"]);
    // "nothing of the crate" means nothing, not even domain.
    assert_eq!(violations("crypto", &rules["crypto"], "crypto/fixture.rs", "use crate::domain::TenantId;").len(), 1);
    assert!(violations("service", &rules["service"], "service/fixture.rs", "use crate::store::DbConnection;").is_empty());
}
