//! `cargo xtask web [--no-serve | --test] [--port N] [--run FILE]`: builds the
//! browser demo (daa-wasm for wasm32 in the `wasm` profile, then
//! `wasm-bindgen --target web` into `web/pkg/`, then `wasm-opt` when it is
//! installed) and serves `web/` on 127.0.0.1. Files under the directory
//! the command was started in are served under `/files/`, so the run viewer
//! opens a native run with `?run=/files/runs/testbed/metrics.jsonl`
//! (`--run FILE` prints that address). `--test` runs the end-to-end browser
//! test instead of serving (`web/tests/demo.spec.mjs`: Debian's chromium,
//! playwright-core from the lockfile; `scripts/setup.sh --web` installs them).

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tiny_http::{Header, Method, Request, Response, Server};

const PACKAGE: &str = "daa-wasm";
/// What a path segment of a printed address escapes: all but letters,
/// digits and `-._~` (RFC 3986's unreserved characters).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
const TARGET: &str = "wasm32-unknown-unknown";

/// What `cargo xtask web` takes.
#[derive(Debug, Args)]
pub struct WebArgs {
    /// Build only.
    #[arg(long, conflicts_with = "test")]
    pub no_serve: bool,
    /// Build, then run the headless-Chromium test instead of serving.
    #[arg(long)]
    pub test: bool,
    /// The port on 127.0.0.1.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// A run's metrics.jsonl to open in the run viewer (prints its address).
    #[arg(long)]
    pub run: Option<PathBuf>,
}

/// `cargo xtask web`.
pub fn run(args: &WebArgs) -> Result<()> {
    let root = crate::workspace_root()?;
    build(&root)?;
    if args.test {
        return browser_test(&root);
    }
    if args.no_serve {
        return Ok(());
    }
    let port = args.port;
    let files_root = std::env::current_dir().context("current directory")?;
    // The run's address before the server starts: a file it cannot serve is an error now, not a 404 later.
    let run_url = args.run.as_deref().map(|file| run_viewer_path(file, &files_root)).transpose()?;
    let server = Server::http(("127.0.0.1", port)).map_err(|e| anyhow!("127.0.0.1:{port}: {e}"))?;
    println!("serving {} at http://127.0.0.1:{port}/", root.join("web").display());
    if let (Some(file), Some(url)) = (&args.run, run_url) {
        println!("the run viewer with {}: http://127.0.0.1:{port}/?run={url}", file.display());
    }
    let (web, files_root) = (Arc::new(root.join("web")), Arc::new(files_root));
    for request in server.incoming_requests() {
        let (web, files_root) = (Arc::clone(&web), Arc::clone(&files_root));
        // One thread per request: a page's files load in parallel.
        std::thread::spawn(move || {
            if let Err(e) = answer(request, &web, &files_root) {
                eprintln!("request failed: {e:#}");
            }
        });
    }
    Ok(())
}

/// Installs web/tests' node packages from the lockfile when one is missing.
pub fn node_packages(root: &Path) -> Result<PathBuf> {
    let tests = root.join("web").join("tests");
    if ["playwright-core", "fast-check"].iter().any(|p| !tests.join("node_modules").join(p).exists()) {
        let status = Command::new("npm")
            .current_dir(&tests)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .status()
            .context("running npm ci (install node and npm: scripts/setup.sh --web)")?;
        if !status.success() {
            bail!("npm ci in {} failed ({status})", tests.display());
        }
    }
    Ok(tests)
}

/// Runs `web/tests/demo.spec.mjs` with node, then the viewer's metrics and
/// samples readers under fast-check for 5 s each (`web/tests/*.fuzz.mjs`).
fn browser_test(root: &Path) -> Result<()> {
    let tests = node_packages(root)?;
    let status = Command::new("node")
        .current_dir(&tests)
        .arg("demo.spec.mjs")
        .status()
        .context("running node (scripts/setup.sh --web installs it)")?;
    if !status.success() {
        bail!("the browser test failed ({status})");
    }
    for (script, reader) in [("metrics.fuzz.mjs", "metrics"), ("samples.fuzz.mjs", "samples")] {
        let status = Command::new("node")
            .current_dir(&tests)
            .arg(script)
            .status()
            .context("running node (scripts/setup.sh --web installs it)")?;
        if !status.success() {
            bail!("the run viewer's {reader} reader failed under fast-check ({status})");
        }
    }
    Ok(())
}

/// The `wasm-bindgen` version in Cargo.lock (the CLI must match it).
fn locked_bindgen_version(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\""
            && let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(version.trim_end_matches('"').to_string());
        }
    }
    bail!("Cargo.lock has no wasm-bindgen package")
}

fn build(root: &Path) -> Result<()> {
    let version = locked_bindgen_version(root)?;
    let install = format!("cargo install wasm-bindgen-cli --version {version}");
    let found = Command::new("wasm-bindgen").arg("--version").output();
    match found {
        Ok(out) if String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1) == Some(version.as_str()) => {}
        Ok(out) => bail!(
            "wasm-bindgen CLI is {}, the crate is {version}: install the matching one with `{install}`",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        Err(_) => bail!("the wasm-bindgen CLI is not installed: `{install}` (about 5 minutes)"),
    }
    eprintln!("building {PACKAGE} for {TARGET} (profile wasm; the first build takes a while)");
    let status = crate::cargo()
        .current_dir(root)
        .args(["build", "--package", PACKAGE, "--lib", "--target", TARGET, "--profile", "wasm"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!(
            "building {PACKAGE} for {TARGET} failed ({status}); is the target installed? `rustup target add {TARGET}`"
        );
    }
    let wasm = crate::target_dir()?.join(TARGET).join("wasm").join("daa_wasm.wasm");
    let out = root.join("web").join("pkg");
    let status = Command::new("wasm-bindgen")
        .args(["--target", "web", "--out-dir"])
        .arg(&out)
        .arg(&wasm)
        .status()
        .context("running wasm-bindgen")?;
    if !status.success() {
        bail!("wasm-bindgen failed ({status})");
    }
    let bindgen_out = out.join("daa_wasm_bg.wasm");
    match Command::new("wasm-opt").arg("--version").output() {
        Ok(_) => {
            let optimised = out.join("daa_wasm_bg.opt.wasm");
            let status = Command::new("wasm-opt")
                .args(["-O3", "--enable-simd", "--enable-bulk-memory", "--enable-nontrapping-float-to-int", "-o"])
                .arg(&optimised)
                .arg(&bindgen_out)
                .status()
                .context("running wasm-opt")?;
            if !status.success() {
                bail!("wasm-opt failed ({status})");
            }
            std::fs::rename(&optimised, &bindgen_out)?;
        }
        Err(_) => eprintln!("wasm-opt not found: the wasm is not optimised further (Debian: apt-get install binaryen)"),
    }
    let size = std::fs::metadata(&bindgen_out)?.len();
    eprintln!("wrote {} ({:.2} MB)", out.display(), size as f64 / 1e6);
    Ok(())
}

/// The `/files/…` address of a run's `metrics.jsonl` (percent-encoded): it
/// must lie under `files_root`, the folder the server was started in.
fn run_viewer_path(file: &Path, files_root: &Path) -> Result<String> {
    let absolute = std::path::absolute(file).with_context(|| format!("--run {}", file.display()))?;
    let relative = absolute.strip_prefix(files_root).map_err(|_| {
        anyhow!(
            "--run {}: the server shows files under the folder it was started in ({}); start it there",
            file.display(),
            files_root.display()
        )
    })?;
    let encoded: Vec<String> = relative
        .components()
        .map(|c| utf8_percent_encode(&c.as_os_str().to_string_lossy(), PATH_SEGMENT).to_string())
        .collect();
    Ok(format!("/files/{}", encoded.join("/")))
}

/// The file a request path names: `/` is `web/index.html`, `/files/…` lies
/// under `files_root`, anything else under `web`; `None` for a path that
/// would climb out of its folder (`..`, an absolute or a root component)
/// or names a hidden file or folder (`.git`, `.env`).
fn requested_file(url: &str, web: &Path, files_root: &Path) -> Option<PathBuf> {
    let path = url.split('?').next().unwrap_or("/");
    let path = percent_decode_str(path).decode_utf8().ok()?;
    let (base, relative) = match path.strip_prefix("/files/") {
        Some(rest) => (files_root, rest),
        None if path == "/" => (web, "index.html"),
        None => (web, path.trim_start_matches('/')),
    };
    let relative = Path::new(relative);
    let plain = |c: Component<'_>| matches!(c, Component::Normal(name) if !name.to_string_lossy().starts_with('.'));
    relative.components().all(plain).then(|| base.join(relative))
}

fn answer(request: Request, web: &Path, files_root: &Path) -> Result<()> {
    let text = |status: u16, body: String| {
        Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "text/plain; charset=utf-8"))
    };
    if !matches!(request.method(), Method::Get | Method::Head) {
        return Ok(request.respond(text(405, "only GET\n".into()))?);
    }
    let url = request.url().to_string();
    let Some(path) = requested_file(&url, web, files_root).filter(|p| p.is_file()) else {
        return Ok(request.respond(text(404, format!("{url}: not found\n")))?);
    };
    let file = File::open(&path).with_context(|| format!("{}", path.display()))?;
    let response = Response::from_file(file)
        .with_header(header("Content-Type", &content_type(&path)))
        .with_header(header("Cache-Control", "no-store"));
    Ok(request.respond(response)?)
}

/// The MIME type of a served file: mime_guess's, but TypeScript
/// declarations (`.d.ts` of `web/pkg/`) as text, not MPEG transport streams.
fn content_type(path: &Path) -> String {
    match path.extension().and_then(|e| e.to_str()) {
        Some("ts") => "text/plain; charset=utf-8".into(),
        _ => mime_guess::from_path(path).first_or_octet_stream().essence_str().to_string(),
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_stay_inside_their_folders() {
        let (web, files) = (Path::new("/srv/web"), Path::new("/home/run"));
        let file = |url: &str| requested_file(url, web, files);
        assert_eq!(file("/"), Some(web.join("index.html")));
        assert_eq!(file("/pkg/daa_wasm.js?v=2"), Some(web.join("pkg/daa_wasm.js")));
        assert_eq!(file("/files/runs/a%20b/metrics.jsonl"), Some(files.join("runs/a b/metrics.jsonl")));
        for escape in
            ["/../etc/passwd", "/files/../../etc/passwd", "/%2e%2e/secret", "/files//etc/passwd", "/files/.git/config"]
        {
            assert_eq!(file(escape), None, "{escape}");
        }
    }

    #[test]
    fn a_runs_address_is_under_the_files_root_and_percent_encoded() {
        let root = Path::new("/home/me");
        assert_eq!(
            run_viewer_path(Path::new("/home/me/runs/a b/metrics.jsonl"), root).unwrap(),
            "/files/runs/a%20b/metrics.jsonl"
        );
        let err = run_viewer_path(Path::new("/elsewhere/metrics.jsonl"), root).unwrap_err().to_string();
        assert!(err.contains("/elsewhere/metrics.jsonl") && err.contains("start it there"), "{err}");
    }

    #[test]
    fn the_demo_s_files_get_their_types() {
        for (name, mime) in [
            ("index.html", "text/html"),
            ("app.js", "text/javascript"),
            ("daa_wasm_bg.wasm", "application/wasm"),
            ("chart.svg", "image/svg+xml"),
            ("daa_wasm.d.ts", "text/plain; charset=utf-8"),
        ] {
            assert_eq!(content_type(Path::new(name)), mime, "{name}");
        }
    }
}
