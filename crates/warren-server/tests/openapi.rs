//! `web/openapi.json` is the OpenAPI document the service serves at
//! `/openapi.json`, minus this host's limits (written in at serve time).
//! It is committed because the web console is built before the Rust code
//! (the binary embeds it) and generates its TypeScript types from it; the
//! Python SDK's tests check its models against it. This test keeps it
//! current: it fails when the document the code describes differs from the
//! committed one, and rewrites the file when `WARREN_UPDATE_OPENAPI=1`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

const UPDATE: &str = "WARREN_UPDATE_OPENAPI=1 cargo test -p warren-server --test openapi";

fn committed_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/openapi.json")
}

/// Object keys sorted at every level (whatever the map type keeps).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Pretty JSON with sorted keys and a final newline.
fn render(document: Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(document)).expect("JSON serializes");
    text.push('\n');
    text
}

fn write_atomic(path: &Path, text: &str) {
    let dir = path.parent().expect("web/ exists");
    let tmp = dir.join(format!(".openapi.json.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&tmp);
        panic!("cannot write {}: {error}", path.display());
    }
}

#[test]
fn the_committed_openapi_document_is_current() {
    let path = committed_path();
    let document = warren_server::openapi_document();
    // The committed document is host-independent: no CPU/memory maxima.
    let create = &document["components"]["schemas"]["CreateSandbox"]["properties"];
    assert!(
        create.is_object(),
        "the document describes CreateSandbox's properties"
    );
    assert!(
        create["cpus"].get("maximum").is_none() && create["memory_mib"].get("maximum").is_none(),
        "host limits belong to the served document only"
    );
    let current = render(document);

    if std::env::var_os("WARREN_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        write_atomic(&path, &current);
        eprintln!("wrote {}", path.display());
        return;
    }

    let committed = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => panic!(
            "cannot read {}: {error}; write it with `{UPDATE}`",
            path.display()
        ),
    };
    if committed != current {
        let line = committed
            .lines()
            .zip(current.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(current.lines().count()));
        panic!(
            "{} is not the document the code describes (first difference at line {}: \
             committed {:?}, current {:?}); the REST types changed: run `{UPDATE}` \
             and commit web/openapi.json (the web console's types are generated from it, \
             and the Python SDK's models are checked against it)",
            path.display(),
            line + 1,
            committed.lines().nth(line).unwrap_or("<end of file>"),
            current.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}
