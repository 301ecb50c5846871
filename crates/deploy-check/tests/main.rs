//! Every deployment file parsed and held against what the binaries expect.

mod common;
mod compose;
mod dockerfile;
mod kubernetes;
mod monitoring;
mod scripts;
