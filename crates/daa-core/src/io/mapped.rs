//! Safetensors files, memory-mapped once with their header parsed once.
//! Tensors come out as [`HostTensor`]s that borrow the mapped bytes (no copy)
//! whenever the stored data is aligned for its element type, which is the
//! case for files written by the `safetensors` libraries; otherwise the
//! requested range is copied. Every error names the file and the tensor.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::safetensors::tensor::{Dtype, Metadata, TensorInfo};
use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{DaaError, Result};
use crate::tensor::{DType, Elements, HostTensor, SharedBytes, TensorData};

/// A memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    metadata: Metadata,
}

/// One tensor of a [`SafetensorsFile`]: where its bytes lie, its element type and shape.
#[derive(Debug, Clone, Copy)]
pub struct StoredTensor<'a> {
    file: &'a SafetensorsFile,
    name: &'a str,
    info: &'a TensorInfo,
}

fn file_error(path: &Path, message: impl Into<String>) -> DaaError {
    DaaError::File { path: path.to_path_buf(), message: message.into() }
}

impl SafetensorsFile {
    /// Maps `path` and parses its header (once).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
        // SAFETY: the map is only read. As with every reader of files other
        // processes may change, a file truncated underneath the run is outside
        // what can be guarded against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| file_error(path, format!("cannot map: {e}")))?;
        let (header_len, metadata) = ::safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| file_error(path, format!("not a safetensors file: {e}")))?;
        Ok(Self { path: path.to_path_buf(), map: Arc::new(map), data_start: 8 + header_len, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the stored tensors, in the order of their data.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// The `__metadata__` entry `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.metadata().as_ref()?.get(key).map(String::as_str)
    }

    /// A tensor by name, or `None` when absent.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<StoredTensor<'a>> {
        let info = self.metadata.info(name)?;
        Some(StoredTensor { file: self, name, info })
    }

    /// A tensor by name, or an error naming the file, the tensor, what it is
    /// for (`expected`) and which tensors the file does hold.
    pub fn require<'a>(&'a self, name: &'a str, expected: &str) -> Result<StoredTensor<'a>> {
        self.get(name).ok_or_else(|| {
            file_error(
                &self.path,
                format!("tensor `{name}` is missing (expected {expected}); the file holds {:?}", self.names()),
            )
        })
    }

    fn shared_bytes(&self) -> Arc<dyn SharedBytes> {
        Arc::clone(&self.map) as Arc<dyn SharedBytes>
    }
}

impl StoredTensor<'_> {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// Shape as stored.
    pub fn shape(&self) -> &[usize] {
        &self.info.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.info.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored element type as safetensors writes it (`F32`, `BF16`, `F8_E4M3`, …).
    pub fn stored_dtype(&self) -> String {
        format!("{:?}", self.info.dtype)
    }

    /// The element type, or an error naming the file and tensor when daa
    /// cannot read it (daa reads F32, F16, BF16, F64, I32, I64, U8 and BOOL).
    pub fn dtype(&self) -> Result<DType> {
        Ok(match self.info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            Dtype::I32 => DType::I32,
            Dtype::I64 => DType::I64,
            Dtype::U8 | Dtype::BOOL => DType::U8,
            other => {
                return Err(file_error(
                    &self.file.path,
                    format!("tensor `{}` has dtype {other:?}, which daa does not read", self.name),
                ));
            }
        })
    }

    /// Lets this tensor's pages leave the process's resident memory: the
    /// kernel drops them (they are read from the file again if touched).
    /// Loading a checkpoint tensor by tensor and releasing each keeps the
    /// resident set to the tensors being converted instead of the whole file.
    pub fn release(&self) {
        #[cfg(unix)]
        {
            let range = self.byte_range(0..self.len());
            if range.is_empty() {
                return;
            }
            // SAFETY: the map is read-only and its pages are clean file pages:
            // MADV_DONTNEED only drops them, and any later read (including a
            // borrowed view still alive) faults the same bytes back in from
            // the file. Advice is a hint: a failure changes nothing.
            let _ = unsafe {
                self.file.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len())
            };
        }
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.file.map[self.byte_range(0..self.len())]
    }

    fn byte_range(&self, elements: Range<usize>) -> Range<usize> {
        let size = self.info.dtype.bitsize() / 8;
        let start = self.file.data_start + self.info.data_offsets.0;
        start + elements.start * size..start + elements.end * size
    }

    /// The whole tensor as a host tensor of its stored shape (no copy when aligned).
    pub fn host(&self) -> Result<HostTensor> {
        self.host_range(0..self.len(), &self.info.shape.clone())
    }

    /// Elements `elements` (flat, row-major) as a host tensor of `shape`,
    /// borrowing the mapped bytes when they are aligned for the element type
    /// (copied otherwise).
    pub fn host_range(&self, elements: Range<usize>, shape: &[usize]) -> Result<HostTensor> {
        if elements.start > elements.end || elements.end > self.len() {
            return Err(file_error(
                &self.file.path,
                format!("tensor `{}`: elements {elements:?} lie outside its {} elements", self.name, self.len()),
            ));
        }
        let bytes = self.file.shared_bytes();
        let range = self.byte_range(elements);
        fn view<T: bytemuck::Pod>(bytes: Arc<dyn SharedBytes>, range: Range<usize>) -> Elements<T> {
            match Elements::borrowed(Arc::clone(&bytes), range.clone()) {
                Some(e) => e,
                None => bytemuck::pod_collect_to_vec::<u8, T>(&(*bytes).as_ref()[range]).into(),
            }
        }
        let data = match self.dtype()? {
            DType::F32 => TensorData::F32(view::<f32>(bytes, range)),
            DType::F16 => TensorData::F16(view::<f16>(bytes, range)),
            DType::BF16 => TensorData::BF16(view::<bf16>(bytes, range)),
            DType::F64 => TensorData::F64(view::<f64>(bytes, range)),
            DType::I32 => TensorData::I32(view::<i32>(bytes, range)),
            DType::I64 => TensorData::I64(view::<i64>(bytes, range)),
            DType::U8 => TensorData::U8(view::<u8>(bytes, range)),
        };
        HostTensor::new(data, shape).map_err(|e| file_error(&self.file.path, format!("tensor `{}`: {e}", self.name)))
    }
}
