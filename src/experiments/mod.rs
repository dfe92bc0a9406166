//! One module per experiment: config → run per seed (through [`harness`]) → metrics JSON.

pub mod check;
pub mod clip_data;
pub mod harness;
pub mod predictions;
pub mod regard_report;
pub mod registry;

pub use registry::Experiment;

/// Declares each experiment's module and lists its entries in [`REGISTRY`], so that adding an
/// experiment is its file plus one line in the `experiments!` list below.
macro_rules! experiments {
    ($($module:ident => [$($entry:ident),+ $(,)?]),+ $(,)?) => {
        $(pub mod $module;)+
        /// Every experiment, once. The command line (`main.rs`), `equirun sweep` (where a run's
        /// results are) and `equirun report` (what to tabulate) read this list and nothing else.
        pub const REGISTRY: &[Experiment] = &[$($($module::$entry),+),+];
    };
}

experiments! {
    clip => [ENTRY],
    clip_finetune => [ENTRY],
    cnn => [ENTRY, PRETRAIN_ENTRY],
    fairness => [ENTRY],
    multi_image => [ENTRY],
    regard => [ENTRY],
    scan => [PRETRAIN_ENTRY, FINETUNE_ENTRY],
    scan_dump => [ENTRY],
}
