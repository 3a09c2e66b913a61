//! The benchmarks live in `benches/` and the scripts beside this file; see `README.md`.

#![forbid(unsafe_code)]
