//! Tools over many runs: `equirun sweep` (grids of runs, locally or on Slurm) and `equirun
//! report` (tables and plots). They learn about experiments only from the registry
//! (`crate::experiments::REGISTRY`).

pub mod plot;
pub mod report;
pub mod sweep;
pub mod table;
