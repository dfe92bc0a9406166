//! GFLOP/s of the `gemm` crate (the GEMM behind equirun's fused encoders and candle's matmul) on
//! the linear-layer shapes of the CLIP and MiniLM encoders: `y[m, n] = x[m, k] · W[n, k]ᵀ`,
//! row-major, as `kernels::cpu::linear` calls it. `scripts/gemm_shapes_torch.py` times the same
//! shapes through PyTorch's `F.linear` (MKL on x86), so the two GEMMs can be compared in one run:
//!
//!   cargo run --release --example gemm_shapes -- 1        # threads
//!   $EQUIRUN_VENV/bin/python scripts/gemm_shapes_torch.py 1
//!
//! m is the number of token rows: 1,600 = CLIP ViT-B/32 at batch 32 (800 per half of the encoder's
//! two-half split), 750 ≈ a length-sorted MiniLM batch of 32 texts, 216 = one class's 18 prompts.

use std::time::Instant;

/// (m, k, n) — the shapes the workloads spend their time in.
pub const SHAPES: [(usize, usize, usize); 9] = [
    (1600, 768, 2304),
    (1600, 768, 3072),
    (1600, 3072, 768),
    (800, 768, 2304),
    (800, 3072, 768),
    (750, 384, 1152),
    (750, 384, 1536),
    (750, 1536, 384),
    (216, 512, 1536),
];

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for &(m, k, n) in &SHAPES {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        let run = |y: &mut Vec<f32>| unsafe {
            // SAFETY: the strides describe the three row-major buffers above.
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        };
        for _ in 0..3 {
            run(&mut y);
        }
        let flop = 2.0 * (m * n * k) as f64;
        let reps = (20e9 / flop).max(3.0) as usize;
        let t = Instant::now();
        for _ in 0..reps {
            run(&mut y);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"threads\": {threads}, \"gflops\": {:.1}}}",
            flop / s / 1e9
        );
    }
}
