//! Where weights come from (a checkpoint, a random initialiser, the browser)
//! and how they become burn parameters.

use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};
use daa_core::{HostTensor, TensorData as HostData};

use crate::error::{ModelError, read_vec};
use crate::rng::{splitmix64_skip, uniform_open};

/// A provider of weights by Hugging Face name, in the file layout.
pub trait WeightSource {
    /// The values of `name`, row-major, in f32, f16 or bf16 (a checkpoint's
    /// tensors borrow the memory-mapped file: no copy until the weight is
    /// built). Implementations check that the stored shape equals `shape` and
    /// fail with [`ModelError::Shape`] or [`ModelError::MissingTensor`] otherwise.
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError>;

    /// Called once `name` has been built into a parameter: a memory-mapped
    /// source lets its pages go, so loading holds one tensor at a time.
    fn release(&mut self, _name: &str) {}
}

/// Widens `values` (f32, f16 or bf16) into `out` (the same length), in parallel.
fn widen_into(name: &str, values: &HostTensor, out: &mut [f32]) -> Result<(), ModelError> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    match values.data() {
        HostData::F32(v) => out.par_chunks_mut(CHUNK).zip(v.par_chunks(CHUNK)).for_each(|(o, i)| o.copy_from_slice(i)),
        HostData::F16(v) => out.par_chunks_mut(CHUNK).zip(v.par_chunks(CHUNK)).for_each(|(o, i)| {
            o.iter_mut().zip(i).for_each(|(o, x)| *o = x.to_f32());
        }),
        HostData::BF16(v) => out.par_chunks_mut(CHUNK).zip(v.par_chunks(CHUNK)).for_each(|(o, i)| {
            o.iter_mut().zip(i).for_each(|(o, x)| *o = x.to_f32());
        }),
        other => {
            return Err(ModelError::Config(format!(
                "tensor `{name}` has dtype {}; daa reads f32, f16 and bf16 weights",
                other.dtype()
            )));
        }
    }
    Ok(())
}

/// The `[rows, cols]` row-major `values` as `[cols, rows]`: blocks of 64
/// output rows in parallel, each reading its 64 input columns row by row.
fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const BLOCK: usize = 64;
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(BLOCK * rows).enumerate().for_each(|(b, block)| {
        let first = b * BLOCK;
        let width = block.len() / rows;
        for r in 0..rows {
            let src = &values[r * cols + first..r * cols + first + width];
            for (c, &x) in src.iter().enumerate() {
                block[c * rows + r] = x;
            }
        }
    });
    out
}

/// A parameter as [`super::CausalLm::visit_weights`] shows it.
#[derive(Debug)]
pub enum ParamKind<'a, B: Backend> {
    /// A linear layer's weight, stored `[in, out]`, `[out, in]` in files.
    Linear(&'a Param<Tensor<B, 2>>),
    /// A matrix stored as in files (embeddings, untied head).
    Matrix(&'a Param<Tensor<B, 2>>),
    /// A vector (norm weights, biases).
    Vector(&'a Param<Tensor<B, 1>>),
}

impl<B: Backend> ParamKind<'_, B> {
    /// The parameter's id (what gradients and optimizer state are keyed by).
    pub fn id(&self) -> ParamId {
        match self {
            Self::Linear(p) | Self::Matrix(p) => p.id,
            Self::Vector(p) => p.id,
        }
    }

    /// The values as burn holds them (`[in, out]` for linear layers), flattened.
    pub fn flat(&self) -> Tensor<B, 1> {
        match self {
            Self::Linear(p) | Self::Matrix(p) => p.val().flatten(0, 1),
            Self::Vector(p) => p.val(),
        }
    }

    /// Shape in the file layout.
    pub fn file_shape(&self) -> Vec<usize> {
        match self {
            Self::Linear(p) => {
                let [i, o] = p.val().dims();
                vec![o, i]
            }
            Self::Matrix(p) => p.val().dims().to_vec(),
            Self::Vector(p) => p.val().dims().to_vec(),
        }
    }

    /// Whether AdamW's weight decay applies: matrices yes, norms and biases no
    /// (the Hugging Face Trainer's convention).
    pub fn decays(&self) -> bool {
        !matches!(self, Self::Vector(_))
    }

    /// The values in the file layout, as f32; `name` is for the error.
    pub fn to_file_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        match self {
            Self::Linear(p) => read_vec(p.val().transpose(), name),
            Self::Matrix(p) => read_vec(p.val(), name),
            Self::Vector(p) => read_vec(p.val(), name),
        }
    }
}

/// Builds burn parameters from a [`WeightSource`], in `dtype` (each
/// tensor converted as it is built: the host holds one f32 tensor at a time).
pub(crate) struct Loader<'a, B: Backend> {
    pub source: &'a mut dyn WeightSource,
    pub device: &'a B::Device,
    pub dtype: FloatDType,
}

impl<B: Backend> Loader<'_, B> {
    /// `name`'s values in f32 in the file layout, or (with `transpose_cols`
    /// = `Some(c)`) the `[r, c]` file matrix transposed to `[c, r]`; checks
    /// the shape and that every value is finite. Widening, the finiteness
    /// check and the transpose run in parallel (a 7B model is 6.7 G values).
    fn read(&mut self, name: &str, shape: &[usize], transpose_cols: Option<usize>) -> Result<Vec<f32>, ModelError> {
        use rayon::prelude::*;
        let stored = self.source.read(name, shape)?;
        let len: usize = shape.iter().product();
        if stored.len() != len {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                found: stored.shape().to_vec(),
            });
        }
        let mut values = vec![0f32; len];
        widen_into(name, &stored, &mut values)?;
        drop(stored);
        self.source.release(name);
        if let Some(index) = values.par_iter().position_first(|x| !x.is_finite()) {
            return Err(ModelError::NonFinite { name: name.to_string(), index });
        }
        Ok(match transpose_cols {
            Some(cols) if cols > 0 && len > 0 => transposed(&values, len / cols, cols),
            _ => values,
        })
    }

    /// A parameter of `values` (f32) in the loader's dtype.
    fn param<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Param<Tensor<B, D>> {
        let data = TensorData::new(values, shape);
        if self.dtype == FloatDType::F32 {
            return Param::from_data(data, self.device);
        }
        Param::from_tensor(Tensor::<B, D>::from_data(data, self.device).cast(self.dtype))
    }

    /// A matrix kept in the file layout.
    pub fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Param<Tensor<B, 2>>, ModelError> {
        let values = self.read(name, &shape, None)?;
        Ok(self.param(values, shape))
    }

    /// A vector.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Param<Tensor<B, 1>>, ModelError> {
        let values = self.read(name, &[len], None)?;
        Ok(self.param(values, [len]))
    }

    /// `{prefix}.weight` (`[d_out, d_in]` in the file) and, when `bias`,
    /// `{prefix}.bias`, as a burn [`Linear`] (`[d_in, d_out]`, transposed
    /// while it is read).
    pub fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>, ModelError> {
        let name = format!("{prefix}.weight");
        let stored = self.read(&name, &[d_out, d_in], Some(d_in))?;
        let weight = self.param(stored, [d_in, d_out]);
        let bias = if bias { Some(self.vector(&format!("{prefix}.bias"), d_out)?) } else { None };
        Ok(Linear { weight, bias })
    }
}

/// Deterministic random weights for tests and the built-in demo: matrices
/// `N(0, std²)`, norm weights 1, biases `N(0, std²)`. Each tensor's values
/// depend only on the seed and its name, not on the order of reads.
#[derive(Debug, Clone)]
pub struct RandomWeights {
    /// Seed.
    pub seed: u64,
    /// Standard deviation of matrices and biases (0.02 is GPT-2's).
    pub std: f32,
}

impl WeightSource for RandomWeights {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let len: usize = shape.iter().product();
        let values = if name.ends_with("norm.weight") { vec![1.0; len] } else { self.normal(name, len) };
        Ok(HostTensor::from_f32(values, shape)?)
    }
}

impl RandomWeights {
    /// `len` draws of `N(0, std²)` from a stream seeded by the seed and
    /// `name`: value `i` from the stream's draws `2i + 1` and `2i + 2`
    /// (Box–Muller), computed in parallel by jumping to them (the same
    /// values as drawing them in order, on any number of threads).
    fn normal(&self, name: &str, len: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let state = name
            .bytes()
            .fold(self.seed ^ 0xD1B5_4A32_D192_ED03, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3));
        let mut values = vec![0f32; len];
        values.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
            let mut at = splitmix64_skip(state, 2 * (c << 16) as u64); // past the draws of earlier chunks
            for v in chunk.iter_mut() {
                let (u1, u2) = (uniform_open(&mut at), uniform_open(&mut at));
                let n = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                *v = (n as f32) * self.std;
            }
        });
        values
    }
}
