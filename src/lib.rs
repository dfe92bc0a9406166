//! equirun: model-agnostic group equivariance (equitune, equizero, multi-equitune,
//! multi-equizero) for pretrained models, with experiment runners that write JSON per seed.

pub mod cli;
pub mod data;
pub mod device;
pub mod equi;
pub mod experiments;
pub mod groups;
pub mod hub;
pub mod kernels;
pub mod models;
pub mod output;
pub mod parse;
pub mod pypi;
pub mod testing;
pub mod tools;
pub mod train;
