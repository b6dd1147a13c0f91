//! Makes sure `web/dist` (the web console and Swagger UI, built with npm
//! by `./dev.sh`) exists, because it is embedded into the binary. Without
//! it (a plain `cargo build` before the first `./dev.sh build`) a small
//! page that says how to build the console is embedded instead, and cargo
//! prints a warning: the API itself works either way.

use std::path::Path;

fn main() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!(
        "cargo:rerun-if-changed={}",
        dist.join("index.html").display()
    );
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let placeholder = out.join("web-placeholder");
    std::fs::create_dir_all(placeholder.join("docs")).expect("create placeholder dir");
    let page = "<!doctype html><title>warren</title><h1>warren</h1>\
        <p>The web console was not built into this binary. Run <code>./dev.sh build</code> \
        (it builds <code>web/</code> with npm) and rebuild warren. The API is at <code>/v1</code>, \
        its description at <a href=\"/openapi.json\">/openapi.json</a>.</p>";
    std::fs::write(placeholder.join("index.html"), page).expect("write placeholder");
    std::fs::write(placeholder.join("docs/index.html"), page).expect("write placeholder");
    if dist.join("index.html").exists() {
        println!(
            "cargo:rustc-env=WARREN_WEB_DIST={}",
            dist.canonicalize().expect("dist path").display()
        );
    } else {
        println!(
            "cargo:warning=web/dist is missing: embedding a placeholder console (run ./dev.sh build)"
        );
        println!("cargo:rustc-env=WARREN_WEB_DIST={}", placeholder.display());
    }
}
