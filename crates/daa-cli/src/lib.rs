//! The parts of the `daa` command that other crates reuse (the fuzz
//! targets): parsers of the command's own input formats.

pub mod loss_lines;
