//! Reading named tensors from a safetensors file (memory-mapped) into daa-core
//! host tensors, with errors that name the file and the tensor.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use daa_core::HostTensor;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

/// A memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

/// A tensor's place in the file: dtype, shape and raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// The bytes.
    pub bytes: &'a [u8],
}

impl SafetensorsFile {
    /// Opens and maps `path`, checking that its header parses.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: the map is read-only; like every reader of files that other
        // processes may change, we rely on nobody truncating it meanwhile.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
        SafeTensors::deserialize(&map).map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), map })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.map).expect("header checked in open")
    }

    /// A tensor by name, or `None` when absent.
    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        let view = self.parsed().tensor(name).ok()?;
        Some(RawTensor { dtype: view.dtype(), shape: view.shape().to_vec(), bytes: view.data() })
    }

    /// A tensor by name, or an error naming the file, the tensor and what it is for.
    pub fn require(&self, name: &str, expected: &str) -> Result<RawTensor<'_>> {
        self.get(name).ok_or_else(|| {
            let names: Vec<String> = self.parsed().names().into_iter().map(String::from).collect();
            anyhow!(
                "{}: tensor `{name}` is missing (expected {expected}); the file holds {names:?}",
                self.path.display()
            )
        })
    }
}

impl RawTensor<'_> {
    /// Elements `start..end` (flat indices) as a daa-core host tensor of `shape`.
    pub fn to_host(&self, name: &str, start: usize, end: usize, shape: &[usize]) -> Result<HostTensor> {
        let size = self.dtype.bitsize() / 8;
        let bytes = &self.bytes[start * size..end * size];
        let t = match self.dtype {
            Dtype::F32 => HostTensor::from_f32(bytemuck::pod_collect_to_vec::<u8, f32>(bytes), shape),
            Dtype::F16 => HostTensor::from_f16(bytemuck::pod_collect_to_vec::<u8, f16>(bytes), shape),
            Dtype::BF16 => HostTensor::from_bf16(bytemuck::pod_collect_to_vec::<u8, bf16>(bytes), shape),
            Dtype::F64 => HostTensor::from_f64(bytemuck::pod_collect_to_vec::<u8, f64>(bytes), shape),
            Dtype::I32 => HostTensor::from_i32(bytemuck::pod_collect_to_vec::<u8, i32>(bytes), shape),
            Dtype::I64 => HostTensor::from_i64(bytemuck::pod_collect_to_vec::<u8, i64>(bytes), shape),
            Dtype::U8 | Dtype::BOOL => HostTensor::from_u8(bytes.to_vec(), shape),
            other => bail!("tensor `{name}` has dtype {other:?}, which daa does not read"),
        };
        Ok(t?)
    }
}
