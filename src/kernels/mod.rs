//! Fast CPU inference kernels (f32): GEMM through the `gemm` crate with its AVX-512 path, and
//! fused, thread-parallel layer norm / attention / activations, assembled into transformer
//! encoders for CLIP (ViT and text towers) and BERT. Used for frozen-model inference only;
//! training keeps candle's autograd ops. `EQUIRUN_FAST=0` switches the fast path off.

pub mod cpu;
pub mod encoder;
pub mod towers;

pub use encoder::enabled;
