//! What `data get` knows how to fetch, with canonical URLs and, where known, SHA-256 digests.
//!
//! Digests here were computed from the files themselves (the book's data sets, OpenAI's
//! `encoder.json` and `vocab.bpe`). Hugging Face's large files are checked against the SHA-256 the
//! hub sends as `X-Linked-Etag`; small files without a known digest are recorded on first download
//! and checked against that record afterwards. The Llama, Qwen3 and Gemma model directories pin no
//! digest (see [`crate::hub`] for what is checked instead).
use crate::hub::{HubModel, Weights};

/// One file of an asset.
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile {
    pub name: &'static str,
    pub url: &'static str,
    pub sha256: Option<&'static str>,
    /// For a zip: the member to extract, and the name to give it.
    pub unzip: Option<&'static str>,
    pub unzip_to: Option<&'static str>,
}

/// A named set of files.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    pub name: &'static str,
    pub about: &'static str,
    pub files: &'static [RemoteFile],
    /// A Hugging Face model repository, fetched as one runnable directory; its file list comes
    /// from the repository (`files` is empty).
    pub hub: Option<HubModel>,
}

const fn file(name: &'static str, url: &'static str, sha256: Option<&'static str>) -> RemoteFile {
    RemoteFile {
        name,
        url,
        sha256,
        unzip: None,
        unzip_to: None,
    }
}

/// A Hugging Face model directory (one `model.safetensors`: these repositories do not shard).
const fn hub_model(
    name: &'static str,
    repo: &'static str,
    gated: bool,
    about: &'static str,
) -> Asset {
    Asset {
        name,
        about,
        files: &[],
        hub: Some(HubModel {
            repo,
            gated,
            weights: Weights::Single,
        }),
    }
}

const ENCODER_SHA: Option<&str> =
    Some("196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783");
const VOCAB_BPE_SHA: Option<&str> =
    Some("1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5");

macro_rules! hf_gpt2 {
    ($name:literal, $repo:literal) => {
        Asset {
            name: $name,
            about: concat!("GPT-2 weights from Hugging Face (", $repo, "), safetensors"),
            files: &[
                file(
                    "config.json",
                    concat!(
                        "https://huggingface.co/",
                        $repo,
                        "/resolve/main/config.json"
                    ),
                    None,
                ),
                file(
                    "generation_config.json",
                    concat!(
                        "https://huggingface.co/",
                        $repo,
                        "/resolve/main/generation_config.json"
                    ),
                    None,
                ),
                file(
                    "vocab.json",
                    concat!("https://huggingface.co/", $repo, "/resolve/main/vocab.json"),
                    None,
                ),
                file(
                    "merges.txt",
                    concat!("https://huggingface.co/", $repo, "/resolve/main/merges.txt"),
                    None,
                ),
                file(
                    "model.safetensors",
                    concat!(
                        "https://huggingface.co/",
                        $repo,
                        "/resolve/main/model.safetensors"
                    ),
                    None,
                ),
            ],
            hub: None,
        }
    };
}

macro_rules! openai_gpt2 {
    ($name:literal, $size:literal) => {
        Asset {
            name: $name,
            about: concat!(
                "GPT-2 ",
                $size,
                " in OpenAI's original TensorFlow checkpoint (the book's path)"
            ),
            files: &[
                file(
                    "checkpoint",
                    concat!(
                        "https://openaipublic.blob.core.windows.net/gpt-2/models/",
                        $size,
                        "/checkpoint"
                    ),
                    None,
                ),
                file(
                    "hparams.json",
                    concat!(
                        "https://openaipublic.blob.core.windows.net/gpt-2/models/",
                        $size,
                        "/hparams.json"
                    ),
                    None,
                ),
                file(
                    "encoder.json",
                    concat!(
                        "https://openaipublic.blob.core.windows.net/gpt-2/models/",
                        $size,
                        "/encoder.json"
                    ),
                    ENCODER_SHA,
                ),
                file(
                    "vocab.bpe",
                    concat!(
                        "https://openaipublic.blob.core.windows.net/gpt-2/models/",
                        $size,
                        "/vocab.bpe"
                    ),
                    VOCAB_BPE_SHA,
                ),
                file(
                    "model.ckpt.index",
                    concat!(
                        "https://openaipublic.blob.core.windows.net/gpt-2/models/",
                        $size,
                        "/model.ckpt.index"
                    ),
                    None,
                ),
                file(
                    "model.ckpt.data-00000-of-00001",
                    concat!(
                        "https://openaipublic.blob.core.windows.net/gpt-2/models/",
                        $size,
                        "/model.ckpt.data-00000-of-00001"
                    ),
                    None,
                ),
            ],
            hub: None,
        }
    };
}

/// Every asset, in the order `data get --list` shows them.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "the-verdict",
        about: "Edith Wharton's The Verdict, the book's pretraining text (chapter 2, 5)",
        files: &[file(
            "the-verdict.txt",
            "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
            Some("b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"),
        )],
        hub: None,
    },
    Asset {
        name: "sms-spam",
        about: "UCI SMS Spam Collection (chapter 6), extracted to sms-spam-collection.tsv",
        files: &[RemoteFile {
            name: "sms_spam_collection.zip",
            url: "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            sha256: None,
            unzip: Some("SMSSpamCollection"),
            unzip_to: Some("sms-spam-collection.tsv"),
        }],
        hub: None,
    },
    Asset {
        name: "instruction-data",
        about: "The book's 1,100 instruction/response pairs (chapter 7)",
        files: &[file(
            "instruction-data.json",
            "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
            Some("7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"),
        )],
        hub: None,
    },
    Asset {
        name: "instruction-preference",
        about: "Instruction data with chosen/rejected responses for DPO (chapter 7 bonus)",
        files: &[file(
            "instruction-data-with-preference.json",
            "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
            Some("305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e"),
        )],
        hub: None,
    },
    hf_gpt2!("gpt2-small", "openai-community/gpt2"),
    hf_gpt2!("gpt2-medium", "openai-community/gpt2-medium"),
    hf_gpt2!("gpt2-large", "openai-community/gpt2-large"),
    hf_gpt2!("gpt2-xl", "openai-community/gpt2-xl"),
    openai_gpt2!("gpt2-small-openai", "124M"),
    openai_gpt2!("gpt2-medium-openai", "355M"),
    openai_gpt2!("gpt2-large-openai", "774M"),
    openai_gpt2!("gpt2-xl-openai", "1558M"),
    hub_model(
        "llama3.2-1b",
        "meta-llama/Llama-3.2-1B",
        true,
        "Llama 3.2 1B base (meta-llama/Llama-3.2-1B), bf16, 2.5 GB; gated: --hf-token",
    ),
    hub_model(
        "llama3.2-1b-instruct",
        "meta-llama/Llama-3.2-1B-Instruct",
        true,
        "Llama 3.2 1B Instruct (meta-llama/Llama-3.2-1B-Instruct), bf16, 2.5 GB; gated: --hf-token",
    ),
    hub_model(
        "qwen3-0.6b",
        "Qwen/Qwen3-0.6B",
        false,
        "Qwen3 0.6B (Qwen/Qwen3-0.6B), chat with thinking on or off, bf16, 1.5 GB",
    ),
    hub_model(
        "gemma3-270m",
        "google/gemma-3-270m",
        true,
        "Gemma 3 270M base (google/gemma-3-270m), bf16, 0.5 GB; gated: --hf-token",
    ),
    hub_model(
        "gemma3-270m-it",
        "google/gemma-3-270m-it",
        true,
        "Gemma 3 270M instruction-tuned (google/gemma-3-270m-it), bf16, 0.5 GB; gated: --hf-token",
    ),
];

/// The asset called `name`.
pub fn asset(name: &str) -> crate::Result<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name).ok_or_else(|| {
        crate::FetchError::Unknown(
            name.to_string(),
            ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
        )
    })
}
