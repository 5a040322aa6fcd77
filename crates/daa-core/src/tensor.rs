//! Host tensors: what every backend uploads from and downloads to.

use std::fmt;
use std::sync::Arc;

use half::{bf16, f16};

use crate::error::{DaaError, Result};

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (the upper half of an f32).
    BF16,
    /// IEEE 754 double precision.
    F64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned byte (masks, booleans).
    U8,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        };
        f.write_str(name)
    }
}

/// Bytes owned elsewhere that host tensors may borrow without a copy: a
/// memory-mapped file, a buffer read once. Anything that can lend its bytes
/// and be shared across threads qualifies.
pub trait SharedBytes: AsRef<[u8]> + Send + Sync + fmt::Debug {}

impl<T: AsRef<[u8]> + Send + Sync + fmt::Debug> SharedBytes for T {}

/// The elements of one tensor: owned (and shared by reference count, so CPU
/// backends "upload" without copying) or borrowed from [`SharedBytes`]
/// (a memory-mapped file), also without copying. Reads as a `&[T]`.
pub struct Elements<T> {
    repr: Repr<T>,
}

enum Repr<T> {
    Owned(Arc<[T]>),
    /// `len` elements of `bytes` from byte `start`, which is aligned for `T`.
    Borrowed {
        bytes: Arc<dyn SharedBytes>,
        start: usize,
        len: usize,
    },
}

impl<T: bytemuck::Pod> fmt::Debug for Elements<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.is_borrowed() { "borrowed" } else { "owned" };
        write!(f, "Elements[{}, {how}]", self.len())
    }
}

impl<T> Clone for Elements<T> {
    fn clone(&self) -> Self {
        let repr = match &self.repr {
            Repr::Owned(v) => Repr::Owned(Arc::clone(v)),
            Repr::Borrowed { bytes, start, len } => {
                Repr::Borrowed { bytes: Arc::clone(bytes), start: *start, len: *len }
            }
        };
        Self { repr }
    }
}

impl<T: bytemuck::Pod> Elements<T> {
    /// The `T`s stored in `bytes[range]`, borrowed. `None` when the range is
    /// out of bounds, not a whole number of elements, or not aligned for `T`
    /// in memory (the caller then copies).
    pub fn borrowed(bytes: Arc<dyn SharedBytes>, range: std::ops::Range<usize>) -> Option<Self> {
        let size = std::mem::size_of::<T>();
        let slice = (*bytes).as_ref().get(range.clone())?;
        if !slice.len().is_multiple_of(size) || !(slice.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        let len = slice.len() / size;
        Some(Self { repr: Repr::Borrowed { bytes, start: range.start, len } })
    }

    /// Whether the elements are borrowed from [`SharedBytes`] (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.repr, Repr::Borrowed { .. })
    }

    /// Mutable elements, copied first when shared with another tensor or borrowed.
    pub fn make_mut(&mut self) -> &mut [T] {
        if let Repr::Borrowed { .. } = &self.repr {
            self.repr = Repr::Owned(Arc::from(self.as_slice()));
        }
        match &mut self.repr {
            Repr::Owned(v) => Arc::make_mut(v),
            Repr::Borrowed { .. } => unreachable!("borrowed elements were copied above"),
        }
    }

    /// The elements as a slice.
    pub fn as_slice(&self) -> &[T] {
        match &self.repr {
            Repr::Owned(v) => v,
            Repr::Borrowed { bytes, start, len } => {
                let size = std::mem::size_of::<T>();
                // Length and alignment were checked in `borrowed`, and the
                // bytes cannot change while `bytes` is alive.
                bytemuck::cast_slice(&(**bytes).as_ref()[*start..*start + len * size])
            }
        }
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for Elements<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T> From<Arc<[T]>> for Elements<T> {
    fn from(v: Arc<[T]>) -> Self {
        Self { repr: Repr::Owned(v) }
    }
}

impl<T> From<Vec<T>> for Elements<T> {
    fn from(v: Vec<T>) -> Self {
        Self { repr: Repr::Owned(v.into()) }
    }
}

impl<T: Clone> From<&[T]> for Elements<T> {
    fn from(v: &[T]) -> Self {
        Self { repr: Repr::Owned(v.into()) }
    }
}

impl<T> FromIterator<T> for Elements<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self { repr: Repr::Owned(iter.into_iter().collect()) }
    }
}

/// The elements of a host tensor, by element type.
#[derive(Clone)]
pub enum TensorData {
    /// f32 elements.
    F32(Elements<f32>),
    /// f16 elements.
    F16(Elements<f16>),
    /// bf16 elements.
    BF16(Elements<bf16>),
    /// f64 elements.
    F64(Elements<f64>),
    /// i32 elements.
    I32(Elements<i32>),
    /// i64 elements.
    I64(Elements<i64>),
    /// u8 elements.
    U8(Elements<u8>),
}

impl fmt::Debug for TensorData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorData::{}[{}]", self.dtype(), self.len())
    }
}

impl TensorData {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::F64(_) => DType::F64,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::U8(_) => DType::U8,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense, row-major tensor in host memory.
#[derive(Debug, Clone)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: TensorData,
}

macro_rules! typed_constructor {
    ($fn_name:ident, $elem:ty, $variant:ident) => {
        #[doc = concat!("A tensor of `", stringify!($elem), "` elements; fails when the shape's product differs from the data length.")]
        pub fn $fn_name(data: impl Into<Elements<$elem>>, shape: &[usize]) -> Result<Self> {
            Self::new(TensorData::$variant(data.into()), shape)
        }
    };
}

impl HostTensor {
    /// A tensor from its data and shape; fails when the shape's product
    /// differs from the number of elements.
    pub fn new(data: TensorData, shape: &[usize]) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(DaaError::Shape {
                tensor: "tensor",
                actual: shape.to_vec(),
                expected: format!("a shape whose product is the data length {}", data.len()),
            });
        }
        Ok(Self { shape: shape.to_vec(), data })
    }

    typed_constructor!(from_f32, f32, F32);
    typed_constructor!(from_f16, f16, F16);
    typed_constructor!(from_bf16, bf16, BF16);
    typed_constructor!(from_f64, f64, F64);
    typed_constructor!(from_i32, i32, I32);
    typed_constructor!(from_i64, i64, I64);
    typed_constructor!(from_u8, u8, U8);

    /// Shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Mutable elements (copied first if shared with another tensor).
    pub fn data_mut(&mut self) -> &mut TensorData {
        &mut self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The same elements under another shape with the same product.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let product: usize = shape.iter().product();
        if product != self.len() {
            return Err(DaaError::Shape {
                tensor: "tensor",
                actual: self.shape,
                expected: format!("a reshape target with {} elements, not {shape:?}", product),
            });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The elements as f32 slice, or a dtype error naming `tensor`.
    pub fn as_f32(&self, tensor: &'static str) -> Result<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            other => Err(DaaError::DType { tensor, actual: other.dtype(), expected: "f32" }),
        }
    }

    /// The elements converted to f64 (any float type), or a dtype error naming `tensor`.
    pub fn to_f64_vec(&self, tensor: &'static str) -> Result<Vec<f64>> {
        Ok(match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::F64(v) => v.to_vec(),
            other => {
                return Err(DaaError::DType {
                    tensor,
                    actual: other.dtype(),
                    expected: "a float type (f32, f16, bf16, f64)",
                });
            }
        })
    }

    /// The elements converted to f32 (any float type), or a dtype error naming `tensor`.
    pub fn to_f32_vec(&self, tensor: &'static str) -> Result<Vec<f32>> {
        Ok(match &self.data {
            TensorData::F32(v) => v.to_vec(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            other => {
                return Err(DaaError::DType {
                    tensor,
                    actual: other.dtype(),
                    expected: "a float type (f32, f16, bf16, f64)",
                });
            }
        })
    }

    /// The elements as i64 (any integer type), or a dtype error naming `tensor`.
    pub fn to_i64_vec(&self, tensor: &'static str) -> Result<Vec<i64>> {
        Ok(match &self.data {
            TensorData::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            TensorData::I64(v) => v.to_vec(),
            TensorData::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            other => {
                return Err(DaaError::DType {
                    tensor,
                    actual: other.dtype(),
                    expected: "an integer type (i32, i64, u8)",
                });
            }
        })
    }

    /// A mask as booleans: any integer or float type, non-zero means "keep".
    pub fn to_bool_vec(&self, tensor: &'static str) -> Result<Vec<bool>> {
        Ok(match &self.data {
            TensorData::U8(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x != 0).collect(),
            _ => self.to_f64_vec(tensor)?.into_iter().map(|x| x != 0.0).collect(),
        })
    }
}

/// An f32 tensor converted to `dtype` (f32, f16 or bf16), same shape.
pub(crate) fn cast_f32_like(tensor: &HostTensor, dtype: DType) -> Result<HostTensor> {
    let v = tensor.as_f32("tensor")?;
    let data = match dtype {
        DType::F32 => TensorData::F32(v.into()),
        DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        other => return Err(DaaError::DType { tensor: "logits", actual: other, expected: "f32, f16 or bf16" }),
    };
    HostTensor::new(data, tensor.shape())
}
