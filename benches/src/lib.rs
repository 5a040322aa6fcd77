//! Benchmarks live in `benches/`; run them with `cargo xtask bench`.

pub mod children;
pub mod ops;
pub mod trainer;
pub mod trainer_report;
