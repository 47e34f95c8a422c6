//! The module arrows of ARCHITECTURE.md: a module may name only the modules listed for
//! it. A `crate::x` path anywhere in a module's files counts.

use std::path::Path;

const RULES: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("crypto", &[]),
    ("authz", &["domain"]),
    ("auth", &["domain"]),
    ("fhir", &["domain"]),
    ("store", &["domain"]),
    ("ledger", &["store"]),
    ("service", &["domain", "authz", "auth", "crypto", "fhir", "ledger", "store"]),
    ("api", &["domain", "authz", "auth", "fhir", "ledger", "service"]),
];

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_only_use_what_their_layer_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (module, allowed) in RULES {
        let mut paths = Vec::new();
        files(&src.join(module), &mut paths);
        assert!(!paths.is_empty(), "module {module} has no files");
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let used: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if used != *module && !allowed.contains(&used.as_str()) {
                    violations.push(format!("{}: uses crate::{used}", path.strip_prefix(&src).unwrap().display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}
