//! One module per experiment: config → run per seed (through [`harness`]) → metrics JSON.

pub mod check;
pub mod clip;
pub mod clip_data;
pub mod clip_finetune;
pub mod cnn;
pub mod fairness;
pub mod harness;
pub mod multi_image;
pub mod predictions;
pub mod regard;
pub mod regard_report;
pub mod registry;
pub mod scan;
pub mod scan_dump;

pub use registry::Experiment;

/// Every experiment, once: adding one is its file plus one line here. The command line
/// (`main.rs`), `equirun sweep` (where a run's results are) and `equirun report` (what to
/// tabulate) read this list and nothing else.
pub const REGISTRY: &[Experiment] = &[
    clip::ENTRY,
    clip_finetune::ENTRY,
    cnn::ENTRY,
    cnn::PRETRAIN_ENTRY,
    fairness::ENTRY,
    multi_image::ENTRY,
    regard::ENTRY,
    scan::PRETRAIN_ENTRY,
    scan::FINETUNE_ENTRY,
    scan_dump::ENTRY,
];
