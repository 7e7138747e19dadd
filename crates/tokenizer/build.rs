//! Bundles the GPT-2 byte-level BPE vocabulary (tiktoken's `r50k_base`) into the library.
//!
//! The ranks come from the `tiktoken-rs` crate, which ships `r50k_base.tiktoken` inside its registry
//! package, so the build needs no network and no file outside the registry. We write the token bytes
//! in rank order as a compact blob, `u32 count` then per token `u8 len` and the bytes; the library
//! parses it in microseconds and derives the merge table itself.
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    let bpe = tiktoken_rs::r50k_base()?;
    const N_ORDINARY: u32 = 50_256;
    let mut blob = Vec::with_capacity(400_000);
    blob.extend_from_slice(&N_ORDINARY.to_le_bytes());
    for rank in 0..N_ORDINARY {
        let bytes = bpe.decode_bytes(&[rank])?;
        let len = u8::try_from(bytes.len())?;
        blob.push(len);
        blob.extend_from_slice(&bytes);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("r50k_base.bin");
    std::fs::File::create(out)?.write_all(&blob)?;
    Ok(())
}
