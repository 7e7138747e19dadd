//! The models of scratchllm (the book's chapters 3–5 and its bonus chapters: GPT-2, Llama 3, Qwen3,
//! Gemma 3): configuration and presets, the model with a KV cache, generation, and weights in every layout people have (ours, Hugging Face, OpenAI's
//! TensorFlow checkpoint, the book's safetensors).
pub mod classifier;
mod config;
pub mod decode;
mod decoder;
mod error;
pub mod generate;
pub mod gguf;
mod gpt;
pub mod hf;
pub mod kernels;
mod kv_cache;
pub mod lora;
pub mod modeldir;
pub mod prompt;
pub mod quant;
mod quantized;
pub mod recompute;
pub mod stop;
pub mod tf;
pub mod weights;

pub use classifier::{ClassifierSpec, TokenPosition};
pub use config::{Arch, GptConfig, LayerType, Llama3Rope, RopeScaling, PRESETS};
pub use error::{ModelError, Result};
pub use generate::{generate, GenerateOptions, Generation};
pub use gpt::{DropoutRng, Gpt, KvCache, LayerNorm, Lin, Segment};
pub use lora::LoraSpec;
pub use modeldir::{Layout, ModelFiles};
pub use prompt::PromptStyle;
pub use quantized::InferenceDtype;
pub use weights::Weights;
