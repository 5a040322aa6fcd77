//! The CUDA libraries a process needs, found on CUDA 12 and CUDA 13 machines
//! alike.
//!
//! cudarc (the workspace pins its `cuda-12080` bindings; burn's CUDA backend
//! shares the same build) opens each library by bare file name through the
//! dynamic loader: `libnvrtc.so` first, then `libnvrtc.so.12`, `.11`, …, and
//! for NCCL `libnccl.so`, `libnccl.so.12`, …. A CUDA 13 toolkit ships
//! `lib64/libnvrtc.so` and is found; but the `nvidia-*-cu13` wheels (and
//! runtime-only installs) ship only `libnvrtc.so.13`, and NCCL everywhere is
//! `libnccl.so.2`: names cudarc never tries. The NVRTC calls daa and cubecl
//! make (create, compile, log, PTX, destroy) are the same in 12 and 13.
//!
//! So instead of a second build per CUDA version, [`link_directory`] makes a
//! folder of links under the unversioned names (`libnvrtc.so →
//! …/libnvrtc.so.13`, `libnccl.so → …/libnccl.so.2`), and
//! [`relaunch_with_linked_libraries`] restarts the program once with that
//! folder (and each library's own folder, for NVRTC's builtins) first on
//! `LD_LIBRARY_PATH` (the loader reads it only at start). [`report`] says
//! what was found where, for the GPU check and for error messages.

use std::path::{Path, PathBuf};

/// A library cudarc opens by bare name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaLibrary {
    /// The driver, `libcuda.so.1` (installed with the NVIDIA driver).
    Driver,
    /// NVRTC, the run-time compiler of daa's and cubecl's kernels.
    Nvrtc,
    /// NCCL, collective communication between GPUs.
    Nccl,
}

impl CudaLibrary {
    /// Every library, in the order a report lists them.
    pub const ALL: [CudaLibrary; 3] = [CudaLibrary::Driver, CudaLibrary::Nvrtc, CudaLibrary::Nccl];

    /// cudarc's name for it (`lib{name}.so…`).
    pub fn stem(self) -> &'static str {
        match self {
            CudaLibrary::Driver => "cuda",
            CudaLibrary::Nvrtc => "nvrtc",
            CudaLibrary::Nccl => "nccl",
        }
    }

    /// The file names cudarc tries, in its order (Linux names only).
    pub fn cudarc_candidates(self) -> Vec<String> {
        let bare = format!("lib{}.so", self.stem());
        let mut names: Vec<String> = cudarc::get_lib_name_candidates(self.stem())
            .into_iter()
            .filter(|n| *n == bare || n.strip_prefix(&format!("{bare}.")).is_some_and(|v| v.parse::<u32>().is_ok()))
            .collect();
        names.dedup();
        names
    }

    /// The first of cudarc's names the dynamic loader opens, if any.
    pub fn loadable_as(self) -> Option<String> {
        // SAFETY: loading a CUDA library runs its initialisers, as cudarc itself would.
        self.cudarc_candidates().into_iter().find(|name| unsafe { libloading::Library::new(name) }.is_ok())
    }

    /// Versioned files of this library in `dirs`, newest major version first
    /// (`libnvrtc.so.13` before `libnvrtc.so.12`; `libnccl.so.2`).
    pub fn versioned_files(self, dirs: &[PathBuf]) -> Vec<PathBuf> {
        self.versioned_files_up_to(dirs, u32::MAX)
    }

    /// [`Self::versioned_files`] of major version `max_major` or older (an
    /// NVRTC newer than the driver writes PTX the driver cannot load).
    pub fn versioned_files_up_to(self, dirs: &[PathBuf], max_major: u32) -> Vec<PathBuf> {
        let prefix = format!("lib{}.so.", self.stem());
        let mut found: Vec<(u32, PathBuf)> = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(version) = name.strip_prefix(&prefix) else { continue };
                let Ok(major) = version.split('.').next().unwrap_or("").parse::<u32>() else { continue };
                if self == CudaLibrary::Nvrtc && major > max_major {
                    continue;
                }
                let path = entry.path();
                if !found.iter().any(|(_, p)| p == &path) {
                    found.push((major, path));
                }
            }
        }
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        found.into_iter().map(|(_, p)| p).collect()
    }
}

/// Where CUDA libraries are looked for beyond the loader's own search:
/// `LD_LIBRARY_PATH`, `$CUDA_PATH`/`$CUDA_HOME`, `/usr/local/cuda`, and the
/// `lib/` folders of the `nvidia-*` Python wheels in the Python environments
/// found (`$VIRTUAL_ENV`, `/usr/local/lib`, `/usr/lib`, `~/.local/lib`).
pub fn search_directories() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.extend([root.join("lib64"), root.join("lib"), root.join("targets/x86_64-linux/lib")]);
        }
    }
    dirs.extend(["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"].map(PathBuf::from));
    let mut python_roots: Vec<PathBuf> = ["/usr/local/lib", "/usr/lib"].map(PathBuf::from).to_vec();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        python_roots.insert(0, PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        python_roots.push(PathBuf::from(home).join(".local/lib"));
    }
    for root in python_roots {
        dirs.extend(wheel_library_directories(&root));
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

/// `<root>/python3.*/{site,dist}-packages/nvidia/*/lib` (the cu12 wheels:
/// `cuda_nvrtc/lib`, `nccl/lib`; the cu13 ones: `cu13/lib`, `nccl/lib`).
fn wheel_library_directories(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let Ok(pythons) = std::fs::read_dir(root) else { return dirs };
    for python in pythons.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python3")) {
        for packages in ["site-packages", "dist-packages"] {
            let Ok(wheels) = std::fs::read_dir(python.path().join(packages).join("nvidia")) else { continue };
            dirs.extend(wheels.flatten().map(|w| w.path().join("lib")).filter(|d| d.is_dir()));
        }
    }
    dirs.sort();
    dirs
}

/// The loaded NVRTC's version, `(major, minor)`, when NVRTC loads.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !crate::cuda::kernels::nvrtc_available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); the call writes two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Makes `dir` hold links under the names cudarc tries for every library
/// it cannot open by those names but of which a versioned file lies in
/// `search` (newest major version). Returns the folders to put first on
/// `LD_LIBRARY_PATH`: `dir` and each linked library's own folder; empty
/// when nothing needed linking.
/// NVRTC is taken of the driver's CUDA major version or older
/// (`max_nvrtc_major`; [`driver_cuda_major`]).
pub fn link_directory(dir: &Path, search: &[PathBuf], max_nvrtc_major: u32) -> std::io::Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    for library in [CudaLibrary::Nvrtc, CudaLibrary::Nccl] {
        if library.loadable_as().is_some() {
            continue;
        }
        let Some(file) = library.versioned_files_up_to(search, max_nvrtc_major).into_iter().next() else { continue };
        link_under_bare_name(dir, library, &file)?;
        if folders.is_empty() {
            folders.push(dir.to_path_buf());
        }
        if let Some(parent) = file.parent().filter(|p| !folders.iter().any(|f| f == p)) {
            folders.push(parent.to_path_buf());
        }
    }
    Ok(folders)
}

/// Links `file` (a versioned library) as `dir/lib{stem}.so`, the first name
/// cudarc tries; returns the link.
/// Ranks started together may link at once: a link already pointing at
/// `file` is kept, and a new one is made under a name of this process's own
/// and renamed over the final name (atomic), never removed first.
pub fn link_under_bare_name(dir: &Path, library: CudaLibrary, file: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join(format!("lib{}.so", library.stem()));
    if std::fs::read_link(&link).is_ok_and(|target| target == file) {
        return Ok(link);
    }
    let staged = dir.join(format!(".lib{}.so.{}", library.stem(), std::process::id()));
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(file, &staged)?;
    std::fs::rename(&staged, &link)?;
    Ok(link)
}

/// The CUDA major version the driver supports (`cuDriverGetVersion`:
/// 13 for driver 580), or `None` without a driver.
pub fn driver_cuda_major() -> Option<u32> {
    if !crate::cuda::driver_present() {
        return None;
    }
    let mut version = 0;
    // SAFETY: the driver library loads (checked above); the call writes one int.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS && version > 0).then_some(version as u32 / 1000)
}

/// The environment variable that marks a relaunched process.
pub const RELAUNCHED: &str = "DAA_CUDA_LIBRARIES_LINKED";

/// On a machine with the NVIDIA driver where cudarc cannot open NVRTC or
/// NCCL by its names but a versioned file exists (CUDA 13 wheels), links
/// them (in `$XDG_CACHE_HOME/daa/cuda-libraries` or `~/.cache/…`) and
/// replaces this process with the same program and arguments, that folder
/// first on `LD_LIBRARY_PATH`. Returns (without relaunching) when there is
/// nothing to do, when already relaunched, or when linking fails; prints
/// one line on stderr when it relaunches.
pub fn relaunch_with_linked_libraries() {
    if std::env::var_os(RELAUNCHED).is_some() || !crate::cuda::driver_present() {
        return;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    // Per host: a home folder shared over NFS by nodes with different installs.
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let dir = cache.join("daa/cuda-libraries").join(if host.is_empty() { "local" } else { &host });
    let max_major = driver_cuda_major().unwrap_or(u32::MAX);
    let folders = match link_directory(&dir, &search_directories(), max_major) {
        Ok(folders) => folders,
        Err(e) => {
            eprintln!("daa: could not link the CUDA libraries in {}: {e}", dir.display());
            return;
        }
    };
    if folders.is_empty() {
        return;
    }
    let mut path = folders.clone();
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        path.extend(std::env::split_paths(&existing));
    }
    let Ok(joined) = std::env::join_paths(path) else { return };
    let Ok(program) = std::env::current_exe() else { return };
    eprintln!(
        "daa: CUDA libraries linked under their unversioned names in {}; restarting with it on LD_LIBRARY_PATH",
        dir.display()
    );
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", joined)
        .env(RELAUNCHED, "1")
        .exec();
    eprintln!("daa: could not restart with the linked CUDA libraries: {error}");
}

/// The error for a missing NVRTC: what cudarc tried, and any versioned
/// NVRTC found (then: link it, or let `daa` relaunch itself).
pub fn nvrtc_missing_message() -> String {
    let tried = CudaLibrary::Nvrtc.cudarc_candidates().into_iter().take(3).collect::<Vec<_>>().join(", ");
    let hint = match CudaLibrary::Nvrtc.versioned_files(&search_directories()).first() {
        Some(file) => format!(
            "found {} (a CUDA 13 or wheel install without the unversioned name): link it as libnvrtc.so in a folder \
             on LD_LIBRARY_PATH (the `daa` command does this itself)",
            file.display()
        ),
        None => "install the CUDA toolkit, or the PyPI wheel nvidia-cuda-nvrtc-cu12 (or nvidia-cuda-nvrtc for CUDA \
                 13), and put its lib folder on LD_LIBRARY_PATH"
            .to_string(),
    };
    format!("NVRTC not found (daa compiles its kernels at run time; tried {tried}): {hint}")
}

/// What this process finds: for each library, the name it loads under (or
/// not) and the versioned files in the search folders; NVRTC's version; the
/// toolkit headers burn's CUDA backend (cubecl) compiles against.
pub fn report() -> String {
    let search = search_directories();
    let mut lines = Vec::new();
    for library in CudaLibrary::ALL {
        let loads = library.loadable_as().map_or_else(
            || {
                let names: Vec<String> = library.cudarc_candidates().into_iter().take(3).collect();
                format!("not loadable under cudarc's names ({})", names.join(", "))
            },
            |name| format!("loads as {name}"),
        );
        let files: Vec<String> = library.versioned_files(&search).iter().map(|p| p.display().to_string()).collect();
        let files = if files.is_empty() { "no versioned file found".to_string() } else { files.join(", ") };
        lines.push(format!("lib{}: {loads}; {files}", library.stem()));
    }
    lines.push(match nvrtc_version() {
        Some((major, minor)) => format!("NVRTC version {major}.{minor}"),
        None => "NVRTC version: not loaded".to_string(),
    });
    lines.push(match toolkit_headers() {
        Some(dir) => format!("CUDA headers (burn's CUDA backend): {}", dir.display()),
        None => "CUDA headers: none (set CUDA_PATH to a toolkit with include/cuda_runtime.h for burn's CUDA backend)"
            .to_string(),
    });
    lines.push(format!("searched: {}", search.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")));
    lines.join("\n")
}

/// The toolkit root cubecl compiles burn's kernels against (its order:
/// `$CUDA_PATH`, `/usr/local/cuda`, `/opt/cuda`, `/usr`), when it holds
/// `include/cuda_runtime.h`.
pub fn toolkit_headers() -> Option<PathBuf> {
    let mut roots: Vec<PathBuf> = std::env::var_os("CUDA_PATH").map(PathBuf::from).into_iter().collect();
    roots.extend(["/usr/local/cuda", "/opt/cuda", "/usr"].map(PathBuf::from));
    roots.into_iter().find(|r| r.join("include/cuda_runtime.h").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_files_newest_major_first() {
        let dir = tempfile_dir("versioned");
        for name in ["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc-builtins.so.13.0", "libnvrtc.so.13.0.88", "x"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let found = CudaLibrary::Nvrtc.versioned_files(std::slice::from_ref(&dir));
        let names: Vec<String> = found.iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
        assert_eq!(names, ["libnvrtc.so.13", "libnvrtc.so.13.0.88", "libnvrtc.so.12"]);
        // A CUDA 12 driver cannot load NVRTC 13's PTX.
        let up_to_12 = CudaLibrary::Nvrtc.versioned_files_up_to(std::slice::from_ref(&dir), 12);
        assert_eq!(up_to_12, [dir.join("libnvrtc.so.12")]);
        assert!(CudaLibrary::Nccl.versioned_files(std::slice::from_ref(&dir)).is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cudarc_never_tries_the_cuda_13_or_nccl_2_names() {
        // Why link_directory exists: if cudarc's list changes, revisit it.
        let nvrtc = CudaLibrary::Nvrtc.cudarc_candidates();
        assert_eq!(nvrtc[0], "libnvrtc.so");
        assert!(!nvrtc.iter().any(|n| n == "libnvrtc.so.13"), "{nvrtc:?}");
        assert!(!CudaLibrary::Nccl.cudarc_candidates().iter().any(|n| n == "libnccl.so.2"));
    }

    #[test]
    fn links_a_versioned_nccl_under_its_bare_name() {
        if CudaLibrary::Nccl.loadable_as().is_some() {
            return; // this machine has a loadable NCCL: nothing to link
        }
        let libs = tempfile_dir("libs");
        std::fs::write(libs.join("libnccl.so.2"), b"").unwrap();
        let links = tempfile_dir("links").join("cuda-libraries");
        let folders = link_directory(&links, std::slice::from_ref(&libs), u32::MAX).unwrap();
        // Linking again (another rank) keeps the link.
        assert_eq!(link_directory(&links, std::slice::from_ref(&libs), u32::MAX).unwrap(), folders);
        assert_eq!(folders, [links.clone(), libs.clone()]);
        assert_eq!(std::fs::read_link(links.join("libnccl.so")).unwrap(), libs.join("libnccl.so.2"));
        std::fs::remove_dir_all(libs).unwrap();
        std::fs::remove_dir_all(links.parent().unwrap()).unwrap();
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("daa-cuda-libraries-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
