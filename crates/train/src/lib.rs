//! Training for scratchllm: the book's data pipeline (chapter 2), AdamW and the learning-rate
//! schedule (chapter 5, appendix D), the one run loop ([`run`]) and the tasks that plug into it:
//! pretraining, classification, instruction tuning and DPO.
pub mod checkpoint;
pub mod classify;
pub mod data;
pub mod dpo;
mod finetune;
pub mod instruct;
mod labeled;
pub mod loss;
mod metrics;
pub mod optim;
pub mod pandas_sample;
pub mod plot;
pub mod pretrain;
pub mod run;
mod rundir;
pub mod settings;
pub mod shards;
pub mod trainer;

pub use data::{batch_tensors, split_text, Loader, TokenStore, Windows};
pub use optim::{AdamW, AdamWConfig, Schedule};
pub use pretrain::{pretrain, PretrainConfig};
pub use run::{Ending, EvalRecord, Observer};
pub use settings::{OptimConfig, RunConfig};
pub use trainer::{StepRecord, TrainSettings, Trainer};
