//! `cargo xtask web [--no-serve | --test] [--port N] [--run FILE]`: builds the
//! browser demo (daa-wasm for wasm32 in the `wasm` profile, then
//! `wasm-bindgen --target web` into `web/pkg/`, then `wasm-opt` when it is
//! installed) and serves `web/` on 127.0.0.1. Files under the directory
//! the command was started in are served under `/files/`, so the run viewer
//! opens a native run with `?run=/files/runs/testbed/metrics.jsonl`
//! (`--run FILE` prints that address). `--test` runs the end-to-end browser
//! test instead of serving (`web/tests/demo.spec.mjs`: Debian's chromium,
//! playwright-core from the lockfile; `scripts/setup.sh --web` installs them).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const PACKAGE: &str = "daa-wasm";
const TARGET: &str = "wasm32-unknown-unknown";

/// `cargo xtask web`.
pub fn run(args: &[String]) -> Result<()> {
    let (mut serve, mut test, mut port, mut run_file) = (true, false, 8000u16, None);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--no-serve" => serve = false,
            "--test" => test = true,
            "--port" => port = iter.next().context("--port needs a number")?.parse().context("--port")?,
            "--run" => run_file = Some(PathBuf::from(iter.next().context("--run needs a metrics.jsonl")?)),
            other => {
                bail!("unknown option `{other}`; usage: cargo xtask web [--no-serve | --test] [--port N] [--run FILE]")
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    build(&root)?;
    if test {
        return browser_test(&root);
    }
    if !serve {
        return Ok(());
    }
    let files_root = std::env::current_dir().context("current directory")?;
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("127.0.0.1:{port} is taken"))?;
    println!("serving {} at http://127.0.0.1:{port}/", root.join("web").display());
    if let Some(file) = run_file {
        let relative = file.strip_prefix(&files_root).unwrap_or(&file);
        println!("the run viewer with {}: http://127.0.0.1:{port}/?run=/files/{}", file.display(), relative.display());
    }
    let web = root.join("web");
    for stream in listener.incoming().flatten() {
        let (web, files_root) = (web.clone(), files_root.clone());
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &web, &files_root) {
                eprintln!("request failed: {e:#}");
            }
        });
    }
    Ok(())
}

/// Runs `web/tests/demo.spec.mjs` with node (its packages installed from
/// the lockfile when missing).
fn browser_test(root: &Path) -> Result<()> {
    let tests = root.join("web").join("tests");
    if !tests.join("node_modules").join("playwright-core").exists() {
        let status = Command::new("npm")
            .current_dir(&tests)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .status()
            .context("running npm ci (install node and npm: scripts/setup.sh --web)")?;
        if !status.success() {
            bail!("npm ci in {} failed ({status})", tests.display());
        }
    }
    let status = Command::new("node")
        .current_dir(&tests)
        .arg("demo.spec.mjs")
        .status()
        .context("running node (scripts/setup.sh --web installs it)")?;
    if !status.success() {
        bail!("the browser test failed ({status})");
    }
    Ok(())
}

/// The `wasm-bindgen` version in Cargo.lock (the CLI must match it).
fn locked_bindgen_version(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\"" {
            if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                return Ok(version.trim_end_matches('"').to_string());
            }
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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building {PACKAGE} for {TARGET} (profile wasm; the first build takes a while)");
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--package", PACKAGE, "--lib", "--target", TARGET, "--profile", "wasm"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!(
            "building {PACKAGE} for {TARGET} failed ({status}); is the target installed? `rustup target add {TARGET}`"
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let wasm = target.join(TARGET).join("wasm").join("daa_wasm.wasm");
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

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ts" | "md" | "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `url_path` under `base`, refusing anything that climbs out of it.
fn resolve(base: &Path, url_path: &str) -> Option<PathBuf> {
    let relative = Path::new(url_path.trim_start_matches('/'));
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(base.join(relative))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(mut stream: TcpStream, web: &Path, files_root: &Path) -> Result<()> {
    let mut request = String::new();
    BufReader::new(&stream).read_line(&mut request)?;
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = percent_decode(target.split('?').next().unwrap_or("/"));
    let file = if let Some(rest) = path.strip_prefix("/files/") {
        resolve(files_root, rest)
    } else if path == "/" {
        Some(web.join("index.html"))
    } else {
        resolve(web, &path)
    };
    let (status, kind, body) = match (method, file) {
        ("GET" | "HEAD", Some(f)) if f.is_file() => ("200 OK", content_type(&f), std::fs::read(&f)?),
        ("GET" | "HEAD", _) => {
            ("404 Not Found", "text/plain; charset=utf-8", format!("{path}: not found\n").into_bytes())
        }
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", b"only GET\n".to_vec()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(&body)?;
    }
    Ok(())
}
