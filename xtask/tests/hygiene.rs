//! Repository hygiene: what must never be committed or shipped.

use std::path::Path;
use std::process::Command;

/// The workspace root: from the `CARGO_MANIFEST_DIR` cargo sets when it runs
/// the test (the path compiled in may be another clone's when clones share a
/// target folder).
fn root() -> std::path::PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest).parent().expect("workspace root").to_path_buf()
}

/// Files git tracks, or `None` outside a git checkout (a source tarball).
fn tracked_files() -> Option<Vec<String>> {
    let out = Command::new("git").arg("-C").arg(root()).args(["ls-files", "-z"]).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout).split('\0').filter(|s| !s.is_empty()).map(str::to_string).collect()
    })
}

#[test]
fn no_build_output_is_tracked() {
    let Some(files) = tracked_files() else {
        eprintln!("skipped: not a git checkout");
        return;
    };
    assert!(!files.is_empty());
    let built: Vec<&String> = files.iter().filter(|f| f.split('/').any(|part| part == "target")).collect();
    assert!(built.is_empty(), "build output is tracked (target/ is ignored at every depth): {built:?}");
}

#[test]
fn manifests_carry_no_placeholders() {
    for manifest in
        ["Cargo.toml", "crates/daa-core/Cargo.toml", "crates/daa-train/Cargo.toml", "crates/daa-cli/Cargo.toml"]
    {
        let text = std::fs::read_to_string(root().join(manifest)).expect(manifest);
        for placeholder in ["example.invalid", "example.com", "TODO", "FIXME"] {
            assert!(!text.contains(placeholder), "{manifest} contains `{placeholder}`");
        }
    }
}
