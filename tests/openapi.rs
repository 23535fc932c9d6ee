//! docs/openapi.yaml stays true: its paths are exactly the ones the index routes, and a real
//! index answers each listed method of each path (never "no such endpoint", never 405) and
//! refuses the methods not listed with 405, while paths not listed get 404.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

/// Path -> methods, read from the spec's `paths:` section (two-space-indented path keys,
/// four-space-indented method keys).
fn spec_routes() -> BTreeMap<String, BTreeSet<String>> {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            current = Some(format!("/{path}"));
            routes.entry(format!("/{path}")).or_default();
        } else if let Some(method) = line
            .strip_prefix("    ")
            .filter(|m| !m.starts_with(' '))
            .and_then(|m| m.strip_suffix(':'))
        {
            let path = current.clone().expect("a method under a path");
            routes
                .entry(path)
                .or_default()
                .insert(method.to_uppercase());
        }
    }
    routes
}

#[test]
fn the_spec_lists_exactly_the_routes_the_index_answers() {
    let routes = spec_routes();
    let spec_paths: BTreeSet<&str> = routes.keys().map(String::as_str).collect();
    let served: BTreeSet<&str> = nap::protocol::INDEX_PATHS.into_iter().collect();
    assert_eq!(
        spec_paths, served,
        "docs/openapi.yaml against protocol::INDEX_PATHS"
    );

    let index = start_index(&["--cluster-secret", "s"]);
    for (path, methods) in &routes {
        assert!(!methods.is_empty(), "{path} lists no method");
        for method in ["GET", "POST"] {
            let (answer, allow) = call(method, &format!("{}{path}", index.url), b"{}");
            if methods.contains(method) {
                assert_ne!(answer.status, 405, "{method} {path}: {}", answer.body);
                assert!(
                    !answer.body.contains("no such endpoint"),
                    "{method} {path} is in the spec but not routed: {}",
                    answer.body
                );
            } else {
                assert_eq!(
                    answer.status, 405,
                    "{method} {path} is not in the spec: {}",
                    answer.body
                );
                // RFC 9110: a 405 names the methods that would do.
                let listed: Vec<String> = methods.iter().cloned().collect();
                assert_eq!(allow, Some(listed.join(", ")), "{method} {path}");
            }
        }
    }
    for unlisted in [
        "/index.html",
        "/files/x",
        "/Register",
        "/status/",
        "/lease/other",
        "/%2e%2e/status",
    ] {
        let (answer, _) = call("GET", &format!("{}{unlisted}", index.url), b"");
        assert_eq!(answer.status, 404, "{unlisted}: {}", answer.body);
        assert!(
            answer.body.contains("no such endpoint"),
            "{unlisted}: {}",
            answer.body
        );
    }
}
