//! Files (feature `io`; not for wasm32): safetensors read through a memory
//! map without copies, and output that appears whole or not at all.

mod atomic;
mod mapped;

pub use atomic::{write_atomic, write_bytes_atomic, write_dir_atomic};
pub use mapped::{SafetensorsFile, StoredTensor};
