//! OpenAI's TensorFlow checkpoint reader on damaged copies of the fixture: clear errors, no panic.
use candle_core::Device;
use scratchllm_model::{modeldir, tf};
use scratchllm_testutil::shared;
use std::path::Path;

fn copy_fixture(to: &Path) -> bool {
    let Some(src) = shared("fixtures/gpt2-tiny/openai-tf") else {
        return false;
    };
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "hparams.json",
        "checkpoint",
        "model.ckpt.index",
        "model.ckpt.data-00000-of-00001",
        "encoder.json",
        "vocab.bpe",
    ] {
        std::fs::copy(src.join(f), to.join(f)).unwrap();
    }
    true
}

fn load_err(dir: &Path) -> String {
    modeldir::load(dir, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .expect("a damaged checkpoint loaded")
}

#[test]
fn index_lists_every_tensor_with_its_shape() {
    let Some(src) = shared("fixtures/gpt2-tiny/openai-tf") else {
        return;
    };
    let entries = tf::parse_index(&std::fs::read(src.join("model.ckpt.index")).unwrap()).unwrap();
    assert_eq!(entries["model/wte"].shape, [50257, 64]);
    assert_eq!(entries["model/h1/attn/c_attn/w"].shape, [1, 64, 192]);
    assert_eq!(entries["model/ln_f/g"].shape, [64]);
    assert_eq!(entries.len(), 2 + 2 * 12 + 2);
}

#[test]
fn damaged_checkpoints_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    if !copy_fixture(dir.path()) {
        return;
    }
    let data = dir.path().join("model.ckpt.data-00000-of-00001");
    let index = dir.path().join("model.ckpt.index");
    let good_data = std::fs::read(&data).unwrap();
    let good_index = std::fs::read(&index).unwrap();

    // One flipped byte in the data: the checksum catches it.
    let mut flipped = good_data.clone();
    flipped[1000] ^= 0x40;
    std::fs::write(&data, &flipped).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("checksum mismatch") && e.contains("data-00000-of-00001"),
        "{e}"
    );

    // A truncated data file: offsets past its end.
    std::fs::write(&data, &good_data[..good_data.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("outside the") && e.contains("byte data file"),
        "{e}"
    );
    std::fs::write(&data, &good_data).unwrap();

    // Truncated, garbage and bit-flipped indexes.
    std::fs::write(&index, &good_index[..good_index.len() - 10]).unwrap();
    assert!(load_err(dir.path()).contains("model.ckpt.index"));
    std::fs::write(&index, b"not a checkpoint").unwrap();
    assert!(load_err(dir.path()).contains("too short"));
    for i in 0..good_index.len() {
        let mut bad = good_index.clone();
        bad[i] ^= 0xff;
        // Every single-byte corruption is either caught or harmless; none may panic.
        let _ = tf::parse_index(&bad);
    }

    // Missing data file.
    std::fs::write(&index, &good_index).unwrap();
    std::fs::remove_file(&data).unwrap();
    assert!(load_err(dir.path()).contains("cannot read"));
}
