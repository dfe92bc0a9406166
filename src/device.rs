//! `--device cpu|cuda[:N]|metal[:N]` and `--dtype f32|f16|bf16`: where and in which precision a
//! model runs. CUDA and Metal need equirun built with the cargo feature of the same name
//! (`cargo build --release --features cuda`); a build without it says so instead of failing
//! deep inside candle. Scoring (softmax, accuracy) always happens in f32.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// Command-line options for the compute device and the inference precision.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceOpts {
    /// Compute device: cpu, cuda, cuda:N (GPU N) or metal. CUDA/Metal need a build with
    /// `--features cuda` / `--features metal`.
    #[arg(long, default_value = "cpu")]
    #[serde(default = "default_device")]
    pub device: String,
    /// Inference precision of the model weights and activations: f32, f16 or bf16 (scoring is
    /// always f32). Half precision is meant for GPUs; on CPU it is slower than f32.
    #[arg(long, default_value = "f32")]
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}

impl Default for DeviceOpts {
    fn default() -> Self {
        DeviceOpts {
            device: default_device(),
            dtype: default_dtype(),
        }
    }
}

impl DeviceOpts {
    /// The candle device and dtype these options name.
    pub fn resolve(&self) -> Result<(Device, DType)> {
        crate::kernels::tune_allocator();
        let dtype = parse_dtype(&self.dtype).context("--dtype")?;
        let dev = parse_device(&self.device).context("--device")?;
        check_supported(&dev, dtype).context("--dtype")?;
        Ok((dev, dtype))
    }
}

/// Fails where candle cannot run a dtype on a device: bf16 matrix products do not exist in
/// candle's CPU backend (f16 does, through the gemm crate).
pub fn check_supported(dev: &Device, dtype: DType) -> Result<()> {
    if dev.is_cpu() && dtype == DType::BF16 {
        bail!(
            "bf16 is not supported on the CPU (candle's CPU backend has no bf16 matrix product): \
             use --dtype f16 or f32 on the CPU, bf16 on a GPU (--device cuda)"
        );
    }
    Ok(())
}

/// Which backends this binary was built with, e.g. `["cpu", "cuda"]`.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "metal") {
        v.push("metal");
    }
    v
}

fn ordinal(kind: &str, rest: Option<&str>) -> Result<usize> {
    match rest {
        None => Ok(0),
        Some(n) => n.trim().parse::<usize>().with_context(|| {
            format!("'{kind}:{n}': the device number after ':' must be a non-negative integer")
        }),
    }
}

fn missing_feature(kind: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "device '{kind}' is not available: this equirun was built without the `{kind}` feature \
         (compiled backends: {}). Rebuild with `cargo build --release --features {kind}`{}, or use \
         --device cpu",
        compiled_backends().join(", "),
        if kind == "cuda" {
            " on a machine with the CUDA toolkit (nvcc)"
        } else {
            " on macOS"
        }
    )
}

static CUDA_DRIVER: std::sync::OnceLock<std::result::Result<(), String>> =
    std::sync::OnceLock::new();

/// Records whether the `cuda` build's binary could load the NVIDIA driver (set once, at the start
/// of `main`, by its lazy driver binding; unset in library use, where the driver is linked).
pub fn set_cuda_driver_status(status: std::result::Result<(), String>) {
    let _ = CUDA_DRIVER.set(status);
}

/// Parses `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N` and opens that device.
pub fn parse_device(spec: &str) -> Result<Device> {
    crate::kernels::tune_allocator();
    let s = spec.trim().to_ascii_lowercase();
    let (kind, rest) = match s.split_once(':') {
        Some((k, r)) => (k.to_string(), Some(r)),
        None => (s.clone(), None),
    };
    match kind.as_str() {
        "cpu" => {
            if rest.is_some() {
                bail!("'{spec}': the CPU device takes no number, use 'cpu'");
            }
            Ok(Device::Cpu)
        }
        "cuda" | "gpu" => {
            let n = ordinal("cuda", rest)?;
            if !cfg!(feature = "cuda") {
                return Err(missing_feature("cuda"));
            }
            if let Some(Err(why)) = CUDA_DRIVER.get() {
                bail!("cannot open CUDA device {n}: {why}");
            }
            Device::new_cuda(n).map_err(without_backtrace).with_context(|| {
                format!("cannot open CUDA device {n} (is there a GPU with that number and a working driver?)")
            })
        }
        "metal" | "mps" => {
            let n = ordinal("metal", rest)?;
            if !cfg!(feature = "metal") {
                return Err(missing_feature("metal"));
            }
            Device::new_metal(n)
                .map_err(without_backtrace)
                .with_context(|| format!("cannot open Metal device {n}"))
        }
        _ => bail!("unknown device '{spec}': expected cpu, cuda, cuda:N or metal"),
    }
}

/// candle's error without the backtrace it captures when RUST_BACKTRACE is set: a user error
/// such as "no GPU" is one line, not a stack dump.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => *inner,
        e => e,
    }
}

/// Parses `f32`, `f16`, `bf16` (also `float32`, `fp16`, `half`, `bfloat16`).
pub fn parse_dtype(spec: &str) -> Result<DType> {
    Ok(match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" | "float" => DType::F32,
        "f16" | "fp16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("unknown dtype '{other}': expected f32, f16 or bf16"),
    })
}

/// Canonical name of a device for result JSON: `cpu`, `cuda:0`, `metal:0`.
pub fn device_name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Canonical name of a dtype: `f32`, `f16`, `bf16`.
pub fn dtype_name(dt: DType) -> &'static str {
    dt.as_str()
}

/// `{"device": …, "dtype": …}` for result JSON.
pub fn inference_json(dev: &Device, dt: DType) -> serde_json::Value {
    serde_json::json!({"device": device_name(dev), "dtype": dtype_name(dt)})
}

/// Records a device and dtype other than the default (CPU, f32) in an experiment's config as
/// `"inference"`: such runs get their own run name and are never mistaken for CPU f32 results,
/// while CPU f32 configs (and so run names and resumption) stay what they were before device
/// support. An absent `"inference"` means CPU f32. (`clip` and `bench-clip` always record it.)
pub fn record_in_config(config: &mut serde_json::Value, dev: &Device, dt: DType) {
    if !dev.is_cpu() || dt != DType::F32 {
        config["inference"] = inference_json(dev, dt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        assert_eq!(parse_dtype("f16").unwrap(), DType::F16);
        assert_eq!(parse_dtype("bfloat16").unwrap(), DType::BF16);
        assert_eq!(parse_dtype("fp32").unwrap(), DType::F32);
        let e = format!("{:#}", parse_dtype("f8").unwrap_err());
        assert!(e.contains("f32, f16 or bf16"), "{e}");
        let e = format!("{:#}", parse_device("tpu").unwrap_err());
        assert!(e.contains("expected cpu, cuda"), "{e}");
        let e = format!("{:#}", parse_device("cuda:x").unwrap_err());
        assert!(e.contains("non-negative integer"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = format!("{:#}", parse_device("cuda:1").unwrap_err());
            assert!(
                e.contains("--features cuda") && e.contains("--device cpu"),
                "{e}"
            );
        }
        if !cfg!(feature = "metal") {
            let e = format!("{:#}", parse_device("metal").unwrap_err());
            assert!(e.contains("--features metal"), "{e}");
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
        let o = DeviceOpts {
            device: "cpu".into(),
            dtype: "bf16".into(),
        };
        let e = format!("{:#}", o.resolve().unwrap_err());
        assert!(
            e.contains("bf16 is not supported on the CPU") && e.contains("f16"),
            "{e}"
        );
        assert_eq!(dtype_name(DType::BF16), "bf16");
    }
}
