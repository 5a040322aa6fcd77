//! Models and datasets by Hugging Face Hub id (`meta-llama/Llama-3.2-1B`,
//! `HuggingFaceH4/ultrafeedback_binarized`), read from the local Hugging Face
//! cache: daa never downloads (training clusters are often air-gapped).
//!
//! The cache is `huggingface_hub`'s layout: under the cache folder,
//! `models--{org}--{name}/` (or `datasets--…`) holds `refs/{revision}` (a
//! file with the commit hash) and `snapshots/{commit}/` (the repository's
//! files, symbolic links into `blobs/`). The cache folder is, as in
//! `huggingface_hub`: `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`.
//!
//! Not the `hf-hub` crate: its cache reads one named file per call (a
//! snapshot folder cannot be listed, which a dataset's shards need) and it
//! ignores `HF_HUB_CACHE`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Which kind of Hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model (`models--…`).
    Model,
    /// A dataset (`datasets--…`).
    Dataset,
}

impl RepoKind {
    fn folder_prefix(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }

    fn download_hint(self, repo: &str) -> String {
        match self {
            Self::Model => format!("hf download {repo}"),
            Self::Dataset => format!("hf download {repo} --repo-type dataset"),
        }
    }
}

/// The cache folder and the variable it came from (for messages).
pub fn cache_dir() -> (PathBuf, &'static str) {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("HF_HUB_CACHE") {
        return (dir, "$HF_HUB_CACHE");
    }
    if let Some(dir) = var("HUGGINGFACE_HUB_CACHE") {
        return (dir, "$HUGGINGFACE_HUB_CACHE");
    }
    if let Some(home) = var("HF_HOME") {
        return (home.join("hub"), "$HF_HOME/hub");
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return (cache.join("huggingface").join("hub"), "$XDG_CACHE_HOME/huggingface/hub");
    }
    let home = var("HOME").unwrap_or_else(|| PathBuf::from("."));
    (home.join(".cache").join("huggingface").join("hub"), "~/.cache/huggingface/hub")
}

/// A Hub id with an optional `@revision` (a branch, tag or commit; default `main`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name` or `name`.
    pub repo: String,
    /// The revision.
    pub revision: String,
}

impl HubId {
    /// Parses `org/name[@revision]`; `None` when `spec` cannot be a Hub id
    /// (the Hub's rules: one or two parts of letters, digits, `-`, `_`, `.`,
    /// no `--` or `..`, not starting or ending with `-` or `.`, 96
    /// characters at most).
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, revision)) if !revision.is_empty() => (repo, revision),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.contains("--")
                && !p.contains("..")
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        if parts.len() > 2 || repo.len() > 96 || !parts.iter().all(|p| part_ok(p)) {
            return None;
        }
        if revision.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return None;
        }
        Some(Self { repo: repo.to_string(), revision: revision.to_string() })
    }

    /// The repository's folder in the cache: `models--org--name`.
    pub fn cache_folder(&self, kind: RepoKind) -> String {
        format!("{}--{}", kind.folder_prefix(), self.repo.replace('/', "--"))
    }

    /// The snapshot folder of this revision in the cache at `cache`.
    pub fn snapshot(&self, kind: RepoKind, cache: &Path) -> Result<PathBuf> {
        let repo_dir = cache.join(self.cache_folder(kind));
        if !repo_dir.is_dir() {
            bail!("{} is not in the cache ({} missing)", self.repo, repo_dir.display());
        }
        let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&self.revision)) {
            Ok(text) => text.trim().to_string(),
            // A commit hash names its snapshot directly.
            Err(_) => self.revision.clone(),
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        if !snapshot.is_dir() {
            let list = |dir: &Path| {
                let mut names: Vec<String> = std::fs::read_dir(dir)
                    .map(|d| d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
                    .unwrap_or_default();
                names.sort();
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            };
            bail!(
                "the cache has {} but not its revision `{}` (refs: {}; snapshots: {})",
                self.repo,
                self.revision,
                list(&repo_dir.join("refs")),
                list(&repo_dir.join("snapshots"))
            );
        }
        Ok(snapshot)
    }
}

/// The Hub model and commit of a snapshot folder of the cache
/// (`…/models--org--name/snapshots/<commit>`), when `dir` is one: how a
/// model read by Hub id is named again (a LoRA adapter's base).
pub fn model_of_snapshot(dir: &Path) -> Option<HubId> {
    let commit = dir.file_name()?.to_str()?;
    let snapshots = dir.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let folder = snapshots.parent()?.file_name()?.to_str()?;
    let repo = folder.strip_prefix(RepoKind::Model.folder_prefix())?.strip_prefix("--")?.replace("--", "/");
    HubId::parse(&format!("{repo}@{commit}"))
}

/// A local path, or else a Hub id of `kind` resolved in the cache.
/// `field` names the setting for messages (`model.path`, `--model`).
/// `Ok(None)` when `spec` is neither an existing path nor a Hub id.
fn resolve(spec: &str, kind: RepoKind, field: &str) -> Result<Option<PathBuf>> {
    let local = Path::new(spec);
    if local.exists() {
        return Ok(Some(local.to_path_buf()));
    }
    let Some(id) = HubId::parse(spec) else { return Ok(None) };
    let (cache, source) = cache_dir();
    let snapshot = id.snapshot(kind, &cache).with_context(|| {
        format!(
            "`{field}` = `{spec}`: no such file or folder here, and the Hugging Face cache {} ({source}) does not \
             hold it. daa reads the cache but never downloads: fetch it where there is a network (`{}`) and copy \
             the cache here, or set HF_HOME / HF_HUB_CACHE to it",
            cache.display(),
            kind.download_hint(&id.repo)
        )
    })?;
    Ok(Some(snapshot))
}

/// A model checkpoint folder: `spec` itself, or the cached snapshot of the
/// Hub model it names; it must hold `config.json`.
pub fn resolve_model(spec: &str, field: &str) -> Result<PathBuf> {
    let Some(dir) = resolve(spec, RepoKind::Model, field)? else {
        bail!("`{field}` = `{spec}`: no such folder (expected a Hugging Face checkpoint folder or a Hub model id)");
    };
    if !dir.is_dir() {
        bail!("`{field}` = `{spec}` is a file; expected a Hugging Face checkpoint folder (config.json, *.safetensors)");
    }
    if crate::peft::is_adapter_only(&dir) {
        bail!(
            "`{field}` = `{spec}` is a PEFT adapter folder, not a model: name its base model here (and resume a \
             LoRA run with --resume), or fold it into a checkpoint first (daa merge --adapter {} --out DIR)",
            dir.display()
        );
    }
    if !dir.join("config.json").is_file() {
        bail!("`{field}` = `{spec}`: {} has no config.json (not a Hugging Face checkpoint folder?)", dir.display());
    }
    Ok(dir)
}

/// A data file or folder: `spec` itself, or the cached snapshot of the Hub
/// dataset it names.
pub fn resolve_dataset(spec: &str, field: &str) -> Result<PathBuf> {
    match resolve(spec, RepoKind::Dataset, field)? {
        Some(path) => Ok(path),
        None => bail!(
            "`{field}` = `{spec}`: no such file or folder (expected a .jsonl or .parquet file, a folder of them, or a \
             Hub dataset id)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{HubId, RepoKind, model_of_snapshot};

    #[test]
    fn a_snapshot_folder_names_its_model_and_commit() {
        let id = model_of_snapshot(Path::new("/c/hub/models--meta-llama--Llama-3.2-1B/snapshots/abc123")).unwrap();
        assert_eq!((id.repo.as_str(), id.revision.as_str()), ("meta-llama/Llama-3.2-1B", "abc123"));
        assert_eq!(model_of_snapshot(Path::new("/c/hub/models--gpt2/snapshots/f00")).unwrap().repo, "gpt2");
        for not in ["/c/hub/datasets--a--b/snapshots/x", "/c/models--a--b/refs/main", "/models/Llama-3.2-1B", "/"] {
            assert!(model_of_snapshot(Path::new(not)).is_none(), "{not}");
        }
    }

    #[test]
    fn hub_ids_follow_the_hub_s_rules() {
        let id = HubId::parse("meta-llama/Llama-3.2-1B").unwrap();
        assert_eq!((id.repo.as_str(), id.revision.as_str()), ("meta-llama/Llama-3.2-1B", "main"));
        assert_eq!(id.cache_folder(RepoKind::Model), "models--meta-llama--Llama-3.2-1B");
        assert_eq!(id.cache_folder(RepoKind::Dataset), "datasets--meta-llama--Llama-3.2-1B");
        assert_eq!(HubId::parse("gpt2@v1.0").unwrap().revision, "v1.0");
        assert_eq!(HubId::parse("org/name@refs/pr/1").unwrap().revision, "refs/pr/1");
        for bad in ["/abs/path", "./rel", "a/b/c", "a--b/c", "a/.b", "a/b.", "x@", "a/b@..", "", "a b/c", "a/b.jsonl/"]
        {
            assert!(HubId::parse(bad).is_none(), "{bad}");
        }
    }
}
