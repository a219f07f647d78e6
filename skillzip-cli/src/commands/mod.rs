//! One module per subcommand.

pub mod calibrate;
pub mod compress;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod inspect;
pub mod merge;
pub mod weave;
