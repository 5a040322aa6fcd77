//! A fingerprint of the weight files a run starts from, which every rank
//! must share (a node whose copy of the checkpoint differs, at the same
//! path, would train other weights silently). Hashing every byte of a 35B
//! checkpoint would take a minute per rank; the fingerprint hashes, per
//! file (`*.safetensors` and `*.json`, also under `master/`), its name, its
//! length, its first MiB (the safetensors header and the first values) and
//! 17 evenly spaced samples of 64 KiB (the last one ending at the file's
//! end): a different checkpoint differs there, in practice, every time.
//!
//! `fingerprint = sha256(Σ_files name ‖ len ‖ bytes[0, 1 MiB) ‖ bytes[o_i, o_i + 64 KiB) for i = 0…16)`
//! with `o_i = i · (len − 64 KiB) / 16`.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

const HEAD: u64 = 1 << 20;
const SAMPLE: u64 = 1 << 16;
const SAMPLES: u64 = 17;

/// The fingerprint of the weight files in `dir` (hex).
pub(crate) fn fingerprint(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    for sub in [dir.to_path_buf(), dir.join(crate::checkpoint::MASTER_WEIGHTS_DIR)] {
        let Ok(entries) = std::fs::read_dir(&sub) else { continue };
        for entry in entries {
            let path = entry.with_context(|| format!("{}: cannot list", sub.display()))?.path();
            let weights = path.extension().is_some_and(|e| e == "safetensors" || e == "json");
            if weights && path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    for path in &files {
        let name = path.strip_prefix(dir).unwrap_or(path).to_string_lossy();
        hash.update(name.as_bytes());
        let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file.metadata().with_context(|| format!("{}: cannot stat", path.display()))?.len();
        hash.update(len.to_le_bytes());
        let mut read = |offset: u64, n: u64| -> Result<()> {
            let n = n.min(len.saturating_sub(offset));
            let mut buffer = vec![0u8; n as usize];
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut buffer))
                .with_context(|| format!("{}: cannot read {n} bytes at {offset} (of {len})", path.display()))?;
            hash.update(&buffer);
            Ok(())
        };
        read(0, HEAD)?;
        if len > HEAD {
            let span = len.saturating_sub(SAMPLE);
            for i in 0..SAMPLES {
                read(i * span / (SAMPLES - 1), SAMPLE)?;
            }
        }
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_changed_byte_in_a_sampled_place_the_length_or_a_master_copy_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        let mut bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&weights, &bytes).unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("tokenizer.model"), b"not hashed").unwrap();
        let base = fingerprint(dir.path()).unwrap();
        assert_eq!(base, fingerprint(dir.path()).unwrap(), "the same files give the same fingerprint");
        std::fs::write(dir.path().join("tokenizer.model"), b"other, still not hashed").unwrap();
        assert_eq!(base, fingerprint(dir.path()).unwrap());
        // The last byte (the last sample), a byte of the header, the length.
        for (at, what) in [(bytes.len() - 1, "the last byte"), (10, "the header")] {
            bytes[at] ^= 1;
            std::fs::write(&weights, &bytes).unwrap();
            assert_ne!(base, fingerprint(dir.path()).unwrap(), "{what}");
            bytes[at] ^= 1;
        }
        std::fs::write(&weights, &bytes[..bytes.len() - 1]).unwrap();
        assert_ne!(base, fingerprint(dir.path()).unwrap(), "the length");
        std::fs::write(&weights, &bytes).unwrap();
        std::fs::create_dir(dir.path().join("master")).unwrap();
        std::fs::write(dir.path().join("master").join("model.safetensors"), b"f32").unwrap();
        assert_ne!(base, fingerprint(dir.path()).unwrap(), "a master copy");
    }
}
