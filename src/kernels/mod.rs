//! Fast CPU inference kernels (f32): GEMM through the `gemm` crate with its AVX-512 path, and
//! fused, thread-parallel layer norm / attention / activations, assembled into transformer
//! encoders for CLIP (ViT and text towers) and BERT. Used for frozen-model inference only;
//! training keeps candle's autograd ops, except for the small CNN, whose layers are fused ops with
//! hand-written backward passes (`conv.rs`). `EQUIRUN_FAST=0` switches the fast path off.

pub mod conv;
pub mod cpu;
pub mod decode;
pub mod encoder;
pub mod resnet;
pub mod towers;

pub use encoder::enabled;

/// Keeps freed memory in the process instead of handing every large tensor back to the kernel
/// (glibc serves allocations above 32 MB with `mmap` and returns them with `munmap`, so each
/// forward pass page-faults and zeroes its activations afresh: 35 % of the time of the CLIP RN50
/// encoder, 2× its throughput). Called once from the model loaders and device parsing;
/// `EQUIRUN_MALLOC=default` leaves the allocator as it is.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("EQUIRUN_MALLOC").is_ok_and(|v| v == "default") {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}
