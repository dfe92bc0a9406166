//! Lazy binding of the CUDA driver for the `cuda` build of the `equirun` binary.
//!
//! candle links its CUDA layer (cudarc) against the driver library `libcuda.so.1` at link time,
//! so without this module a `--features cuda` binary cannot even start on a machine that has no
//! NVIDIA driver: the dynamic loader stops it with exit code 127 before `main`. Here the binary
//! defines every driver entry point cudarc uses as a one-instruction trampoline
//! (`jmp [slot]`), so the static linker resolves cudarc's references to these and `--as-needed`
//! drops `libcuda.so.1` from the binary's dependencies. [`load`] (first thing in `main`) opens
//! the real driver with `dlopen` and fills the slots; without a driver every slot stays on a
//! fallback that returns `CUDA_ERROR_NO_DEVICE`, the failure is recorded in
//! [`equirun::device::set_cuda_driver_status`], and `--device cuda` then says so clearly (exit 2)
//! while `--device cpu` works as in the CPU build.
//!
//! x86-64 Linux only (the trampolines are x86-64 assembly); elsewhere the binary links the
//! driver normally.

use std::ffi::{c_char, c_int};

/// `CUDA_ERROR_NO_DEVICE`: what every entry point returns when no driver could be loaded.
extern "C" fn no_driver() -> c_int {
    100
}

/// `CUDA_ERROR_NOT_SUPPORTED`: an entry point this driver version does not export.
extern "C" fn not_exported() -> c_int {
    801
}

type Slot = unsafe extern "C" fn() -> c_int;

macro_rules! driver_shim {
    ($($name:ident),* $(,)?) => {
        #[allow(non_upper_case_globals)]
        mod slots {
            $( pub static mut $name: super::Slot = super::no_driver; )*
        }
        $(
            #[unsafe(naked)]
            #[no_mangle]
            pub extern "C" fn $name() {
                core::arch::naked_asm!("jmp qword ptr [rip + {slot}]", slot = sym slots::$name);
            }
        )*
        /// (symbol name, its slot) for every trampoline.
        fn all_slots() -> Vec<(&'static str, *mut Slot)> {
            vec![$( (concat!(stringify!($name), "\0"), &raw mut slots::$name) ),*]
        }
    };
}

include!("cuda_shim_symbols.rs");

type ErrStrFn = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
static mut GET_ERROR_STRING: Option<ErrStrFn> = None;
static mut GET_ERROR_NAME: Option<ErrStrFn> = None;

const NO_DRIVER_MSG: &[u8] =
    b"no NVIDIA driver could be loaded (libcuda.so.1 is missing on this machine)\0";

/// `cuGetErrorString`: the driver's, or a message saying that there is no driver.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(e: c_int, s: *mut *const c_char) -> c_int {
    match unsafe { GET_ERROR_STRING } {
        Some(f) => unsafe { f(e, s) },
        None => {
            if !s.is_null() {
                unsafe { *s = NO_DRIVER_MSG.as_ptr() as *const c_char };
            }
            0
        }
    }
}

/// `cuGetErrorName`: the driver's, or `CUDA_ERROR_NO_DEVICE` without a driver.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(e: c_int, s: *mut *const c_char) -> c_int {
    match unsafe { GET_ERROR_NAME } {
        Some(f) => unsafe { f(e, s) },
        None => {
            if !s.is_null() {
                unsafe { *s = c"CUDA_ERROR_NO_DEVICE".as_ptr() };
            }
            0
        }
    }
}

/// Opens the driver and binds every entry point. Must run before any CUDA call and before any
/// other thread starts (first statement of `main`).
pub fn load() {
    let lib = ["libcuda.so.1", "libcuda.so"]
        .iter()
        .find_map(|n| unsafe { libloading::Library::new(*n) }.ok());
    let Some(lib) = lib else {
        equirun::device::set_cuda_driver_status(Err(
            "no NVIDIA driver found: libcuda.so.1 could not be loaded (install the NVIDIA driver \
             on a machine with a GPU, or run with --device cpu)"
                .into(),
        ));
        return;
    };
    for (name, slot) in all_slots() {
        let f = unsafe { lib.get::<Slot>(name.as_bytes()) }
            .map(|s| *s)
            .unwrap_or(not_exported as Slot);
        unsafe { *slot = f };
    }
    unsafe {
        GET_ERROR_STRING = lib.get::<ErrStrFn>(b"cuGetErrorString\0").ok().map(|s| *s);
        GET_ERROR_NAME = lib.get::<ErrStrFn>(b"cuGetErrorName\0").ok().map(|s| *s);
    }
    // The driver stays loaded for the life of the process.
    std::mem::forget(lib);
    equirun::device::set_cuda_driver_status(Ok(()));
}
