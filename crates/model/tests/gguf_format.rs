//! The GGUF container (`scratchllm_model::gguf`): what [`GgufWriter`] writes reads back equal, byte
//! for byte, and hostile files (GGUF files come from the internet) give an error naming the field,
//! never a panic or an allocation the file does not back. Corrupt inputs are put together field by
//! field with [`Raw`], after llama.cpp's `docs/gguf.md`.
use proptest::prelude::*;
use scratchllm_model::gguf::ggml_type::{F16, F32, Q4_0, Q4_K, Q6_K, Q8_0};
use scratchllm_model::gguf::{
    type_block, Array, GgufFile, GgufWriter, TensorInfo, Value, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH,
};
use scratchllm_model::Result;
use std::path::Path;
use std::time::{Duration, Instant};

// The value type ids of the spec's `enum gguf_type`.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;
const ALL_TYPES: [u32; 13] = [
    T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARRAY, T_U64, T_I64, T_F64,
];

/// GGUF bytes put together field by field (all little-endian), so a test can get one field wrong.
#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    /// Magic, version, tensor count, metadata count.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw::default()
            .bytes(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }

    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }

    fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }

    fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }

    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    /// A metadata pair: key, value type id, the value's bytes.
    fn kv(self, key: &str, ty: u32, value: &[u8]) -> Raw {
        self.str(key).u32(ty).bytes(value)
    }

    /// A tensor info: name, dimension count, dims (ggml order), type id, offset in the data section.
    fn tensor(self, name: &str, dims: &[u64], ttype: u32, offset: u64) -> Raw {
        let r = self.str(name).u32(dims.len() as u32);
        dims.iter().fold(r, |r, &d| r.u64(d)).u32(ttype).u64(offset)
    }

    /// Zeros up to the next multiple of `alignment`: where the data section starts.
    fn pad(self, alignment: usize) -> Raw {
        let n = self.0.len().next_multiple_of(alignment) - self.0.len();
        self.zeros(n)
    }

    fn zeros(self, n: usize) -> Raw {
        self.bytes(&vec![0; n])
    }

    fn parse(&self) -> Result<GgufFile> {
        GgufFile::from_bytes("test.gguf", self.0.clone())
    }
}

/// The bytes of a string value.
fn s(v: &str) -> Vec<u8> {
    Raw::default().str(v).0
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `n` bytes that differ from tensor to tensor.
fn filler(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The parse error of `raw` as displayed; a test failure when it parses.
fn err(raw: &Raw) -> String {
    match raw.parse() {
        Ok(_) => panic!("parsed without error: {:02x?}", raw.0),
        Err(e) => e.to_string(),
    }
}

fn assert_err(raw: &Raw, parts: &[&str]) {
    let m = err(raw);
    for p in parts {
        assert!(m.contains(p), "{m:?} does not say {p:?}");
    }
}

/// A small valid file: two metadata pairs and two F32 tensors, the second ending the file, so that
/// every shorter prefix cuts something the header promises.
fn small_raw() -> Raw {
    let list = Raw::default().u32(T_U32).u64(2).u32(7).u32(9);
    Raw::header(3, 2, 2)
        .kv("general.architecture", T_STR, &s("test"))
        .kv("t.list", T_ARRAY, &list.0)
        .tensor("a", &[4], F32, 0)
        .tensor("b", &[2, 4], F32, 32)
        .pad(32)
        .bytes(&f32s(&[1.0, 2.0, 3.0, 4.0]))
        .zeros(16)
        .bytes(&f32s(&[0.5; 8]))
}

/// One F32 tensor "w" of `dims` at `offset`, with `data` bytes of data.
fn one_tensor(dims: &[u64], ttype: u32, offset: u64, data: usize) -> Raw {
    Raw::header(3, 1, 0)
        .tensor("w", dims, ttype, offset)
        .pad(32)
        .zeros(data)
}

/// Metadata of every value type, arrays of every element type, and nested arrays.
fn every_value() -> Vec<(String, Value)> {
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-5)),
        ("t.u16", Value::U16(60_000)),
        ("t.i16", Value::I16(-30_000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(1.5)),
        ("t.f64", Value::F64(-2.25e300)),
        ("t.true", Value::Bool(true)),
        ("t.false", Value::Bool(false)),
        ("t.str", Value::Str("héllo ✓".into())),
        ("t.empty_str", Value::Str(String::new())),
        ("t.arr.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("t.arr.i8", Value::Array(Array::I8(vec![-128, 127]))),
        ("t.arr.u16", Value::Array(Array::U16(vec![1, 65_535]))),
        ("t.arr.i16", Value::Array(Array::I16(vec![-1, 2]))),
        (
            "t.arr.u32",
            Value::Array(Array::U32(vec![1, 4_000_000_000])),
        ),
        ("t.arr.i32", Value::Array(Array::I32(vec![-7, 8]))),
        ("t.arr.u64", Value::Array(Array::U64(vec![u64::MAX]))),
        ("t.arr.i64", Value::Array(Array::I64(vec![i64::MIN, 3]))),
        ("t.arr.f32", Value::Array(Array::F32(vec![0.25, -1e-30]))),
        ("t.arr.f64", Value::Array(Array::F64(vec![0.1, 1e300]))),
        ("t.arr.bool", Value::Array(Array::Bool(vec![true, false]))),
        (
            "t.arr.str",
            Value::Array(Array::Str(strs(&["a", "", "Ġthe"]))),
        ),
        ("t.arr.empty", Value::Array(Array::I32(vec![]))),
        (
            "t.arr.nested",
            Value::Array(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::Str(strs(&["x"])),
                Array::Array(vec![Array::F32(vec![0.5])]),
            ])),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Tensors of the types scratchllm computes, quantized rows a whole number of blocks; the last is
/// 32 bytes, so the file ends where its data does.
fn every_tensor() -> Vec<(&'static str, Vec<u64>, u32, Vec<u8>)> {
    let t =
        |name, dims: &[u64], ttype, bytes| (name, dims.to_vec(), ttype, filler(bytes, bytes as u8));
    vec![
        t("f32", &[3, 2], F32, 24),
        t("f16", &[5], F16, 10),
        t("q8_0", &[64, 2], Q8_0, 2 * 2 * 34),
        t("q4_0", &[32, 3], Q4_0, 3 * 18),
        t("q4_k", &[256], Q4_K, 144),
        t("q6_k", &[256, 1, 1, 1], Q6_K, 210),
        t("last", &[8], F32, 32),
    ]
}

fn every_kind() -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.add(k, v).unwrap();
    }
    for (name, dims, ttype, data) in every_tensor() {
        w.add_tensor(name, dims, ttype, data).unwrap();
    }
    w
}

/// The bytes of [`every_kind`], written once.
fn every_bytes() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| written(&every_kind())).clone()
}

fn written(w: &GgufWriter) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    w.write(&path).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn every_value_type_and_tensor_type_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.gguf");
    every_kind().write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!((f.version(), f.alignment()), (3, DEFAULT_ALIGNMENT));
    assert_eq!(f.metadata(), every_value().as_slice());
    assert_eq!(f.data_start() % DEFAULT_ALIGNMENT, 0);
    let bytes = std::fs::read(&path).unwrap();
    let mut offset = 0;
    for (t, (name, dims, ttype, data)) in f.tensors().iter().zip(every_tensor()) {
        assert_eq!((t.name.as_str(), &t.dims, t.ttype), (name, &dims, ttype));
        assert_eq!(t.size, data.len() as u64, "{name}");
        // Each tensor starts where the one before, padded to the alignment, ends.
        assert_eq!(t.offset, offset, "{name}");
        offset = (t.offset + t.size).next_multiple_of(DEFAULT_ALIGNMENT);
        assert_eq!(f.read_tensor(t).unwrap(), data, "{name}");
        let at = (f.data_start() + t.offset) as usize;
        assert_eq!(&bytes[at..at + data.len()], data, "{name} in the file");
        assert_eq!(f.tensor(name), Some(t));
    }
    assert_eq!(f.tensors().len(), every_tensor().len());
    assert_eq!(bytes.len() as u64, f.data_start() + offset);
    let g = GgufFile::from_bytes("all.gguf", bytes).unwrap();
    assert_eq!((g.metadata(), g.tensors()), (f.metadata(), f.tensors()));
    assert_eq!(g.data_start(), f.data_start());
}

#[test]
fn writing_the_same_content_twice_gives_the_same_bytes() {
    assert_eq!(written(&every_kind()), written(&every_kind()));
}

#[test]
fn general_alignment_aligns_the_data_section_and_every_tensor() {
    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U32(64)).unwrap();
    for (name, dims, ttype, data) in every_tensor() {
        w.add_tensor(name, dims, ttype, data).unwrap();
    }
    let f = GgufFile::from_bytes("a64.gguf", written(&w)).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_start() % 64, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_eq!(f.tensors()[1].offset, 64); // 24 bytes of f32, padded to 64
}

#[test]
fn typed_getters_read_any_integer_and_float_width() {
    let f = GgufFile::from_bytes("all.gguf", every_bytes()).unwrap();
    assert_eq!(f.get_u64("t.u8").unwrap(), 200);
    assert_eq!(f.get_u64("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1.5);
    assert_eq!(f.get_f32("t.f64").unwrap(), f32::NEG_INFINITY); // -2.25e300 rounds past f32
    assert!(f.get_bool("t.true").unwrap() && !f.get_bool("t.false").unwrap());
    assert_eq!(f.get_str("t.str").unwrap(), "héllo ✓");
    assert_eq!(f.get_str_array("t.arr.str").unwrap(), ["a", "", "Ġthe"]);
    assert_eq!(
        f.get_f32_array("t.arr.f64").unwrap(),
        [0.1f32, f32::INFINITY]
    );
    assert_eq!(f.get_i32_array("t.arr.i8").unwrap(), [-128, 127]);
    assert_eq!(f.get_u32_array("t.arr.u16").unwrap(), [1, 65_535]);
    assert_eq!(f.get_i32_array("t.arr.empty").unwrap(), Vec::<i32>::new());
    assert_eq!(f.opt_u64("t.u16").unwrap(), Some(60_000));
    assert_eq!(f.opt_str("no.such.key").unwrap(), None);
}

#[test]
fn a_wrong_typed_value_names_the_key_and_both_types() {
    let f = GgufFile::from_bytes("all.gguf", every_bytes()).unwrap();
    let cases: [(Result<()>, &[&str]); 11] = [
        (
            f.get_str("t.u32").map(drop),
            &["\"t.u32\"", "expected a string", "found u32 4000000000"],
        ),
        (
            f.get_u64("t.str").map(drop),
            &["\"t.str\"", "expected an integer", "found a string"],
        ),
        (
            f.get_u64("t.i8").map(drop),
            &["\"t.i8\"", "a non-negative integer", "found i8 -5"],
        ),
        (
            f.get_f32("t.true").map(drop),
            &["\"t.true\"", "expected a float", "found bool true"],
        ),
        (
            f.get_bool("t.f32").map(drop),
            &["\"t.f32\"", "expected a bool", "found f32 1.5"],
        ),
        (
            f.get_str_array("t.arr.u8").map(drop),
            &["an array of strings", "an array of 3 u8"],
        ),
        (
            f.get_f32_array("t.arr.str").map(drop),
            &["an array of floats", "an array of 3 string"],
        ),
        (
            f.get_i32_array("t.arr.u32").map(drop),
            &[
                "\"t.arr.u32\"",
                "element 1 is 4000000000",
                "does not fit i32",
            ],
        ),
        (
            f.get_u32_array("t.arr.i8").map(drop),
            &["element 0 is -128", "does not fit u32"],
        ),
        (
            f.opt_str_array("t.str").map(drop),
            &["\"t.str\"", "expected an array", "found a string"],
        ),
        (
            f.get_str("no.such.key").map(drop),
            &["all.gguf", "\"no.such.key\"", "missing"],
        ),
    ];
    for (got, parts) in cases {
        let m = got.unwrap_err().to_string();
        for p in parts {
            assert!(m.contains(p), "{m:?} does not say {p:?}");
        }
    }
}

#[test]
fn the_hand_made_file_parses_as_the_spec_says() {
    for version in [2, 3] {
        let mut raw = small_raw();
        raw.0[4..8].copy_from_slice(&u32::to_le_bytes(version));
        let f = raw.parse().unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.get_str("general.architecture").unwrap(), "test");
        assert_eq!(f.get_u32_array("t.list").unwrap(), [7, 9]);
        let b = f.tensor("b").unwrap();
        assert_eq!((b.dims.as_slice(), b.size, b.offset), (&[2, 4][..], 32, 32));
        assert_eq!(f.read_tensor(b).unwrap(), f32s(&[0.5; 8]));
    }
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, whole) in [("small", small_raw().0), ("every", every_bytes())] {
        GgufFile::from_bytes(name, whole.clone()).unwrap();
        for n in 0..whole.len() {
            let cut = Raw(whole[..n].to_vec());
            let m = err(&cut);
            assert!(
                m.contains("truncated") || m.contains("past the end"),
                "{name}[..{n}]: {m}"
            );
            // The file source reads at offsets through its own buffer: the same answer.
            if name == "small" {
                let path = dir.path().join("cut.gguf");
                std::fs::write(&path, &cut.0).unwrap();
                let e = GgufFile::open(&path).err().unwrap().to_string();
                assert_eq!(e.replace(&path.display().to_string(), "test.gguf"), m);
            }
        }
    }
}

#[test]
fn the_wrong_magic_is_refused() {
    for magic in [b"GGML", b"gguf", b"\0\0\0\0", b"FUGG"] {
        let mut raw = small_raw();
        raw.0[..4].copy_from_slice(magic);
        assert_err(&raw, &["test.gguf", "not a GGUF file", "\"GGUF\""]);
    }
}

#[test]
fn unsupported_versions_say_what_to_do() {
    let version = |v: u32| {
        let mut raw = small_raw();
        raw.0[4..8].copy_from_slice(&v.to_le_bytes());
        raw
    };
    assert_err(
        &version(1),
        &["version 1", "not supported", "convert the model again"],
    );
    assert_err(
        &version(4),
        &["GGUF version 4 is not supported", "versions 2 and 3"],
    );
    assert_err(&version(0), &["GGUF version 0 is not supported"]);
    assert_err(&version(u32::MAX), &["not supported"]);
    assert_err(&version(3u32.swap_bytes()), &["big-endian", "version 3"]);
}

#[test]
fn counts_and_lengths_near_2_pow_64_fail_fast_without_allocating() {
    let start = Instant::now();
    for n in [
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
        1 << 61,
        1 << 60,
        1 << 40,
        1000,
    ] {
        assert_err(
            &Raw::header(3, n, 0).zeros(64),
            &[&format!("tensor count {n}"), "past the end"],
        );
        assert_err(
            &Raw::header(3, 0, n).zeros(64),
            &[&format!("metadata key count {n}"), "past the end"],
        );
        let key = Raw::header(3, 0, 1).u64(n).zeros(64);
        assert_err(
            &key,
            &[
                "metadata key #0",
                &format!("string of {n} bytes"),
                "past the end",
            ],
        );
        let value = Raw::header(3, 0, 1)
            .kv("k", T_STR, &Raw::default().u64(n).0)
            .zeros(64);
        assert_err(
            &value,
            &["\"k\"", &format!("string of {n} bytes"), "past the end"],
        );
        for ty in ALL_TYPES {
            let array = Raw::default().u32(ty).u64(n).zeros(64);
            let raw = Raw::header(3, 0, 1).kv("k", T_ARRAY, &array.0);
            assert_err(&raw, &["\"k\"", &format!("array of {n} "), "past the end"]);
        }
        let inner = Raw::default()
            .u32(T_ARRAY)
            .u64(1)
            .u32(T_U8)
            .u64(n)
            .zeros(64);
        let raw = Raw::header(3, 0, 1).kv("k", T_ARRAY, &inner.0);
        assert_err(
            &raw,
            &[
                "\"k\": element 0",
                &format!("array of {n} u8s"),
                "past the end",
            ],
        );
        let name = Raw::header(3, 1, 0).u64(n).zeros(64);
        assert_err(&name, &["tensor #0: name", "past the end"]);
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn unknown_type_ids_are_named() {
    for ty in [13, 100, u32::MAX] {
        let raw = Raw::header(3, 0, 1).kv("k", ty, &[0; 16]);
        assert_err(
            &raw,
            &["metadata key #0 \"k\"", &format!("unknown value type {ty}")],
        );
        let raw = Raw::header(3, 0, 1).kv("k", T_ARRAY, &Raw::default().u32(ty).u64(1).zeros(16).0);
        assert_err(
            &raw,
            &["\"k\"", &format!("unknown array element type {ty}")],
        );
    }
    // 4 and 5 (Q4_2, Q4_3) were removed from ggml; 42 and up are not defined.
    for ttype in [4, 5, 42, 1000, u32::MAX] {
        let raw = one_tensor(&[32], ttype, 0, 256);
        assert_err(
            &raw,
            &["tensor #0 \"w\"", &format!("unknown ggml type id {ttype}")],
        );
    }
}

#[test]
fn quantized_rows_must_be_whole_blocks() {
    for (ttype, name) in [
        (Q8_0, "Q8_0"),
        (Q4_0, "Q4_0"),
        (Q4_K, "Q4_K"),
        (Q6_K, "Q6_K"),
    ] {
        let (block, block_bytes) = type_block(ttype).unwrap();
        let whole = one_tensor(&[block, 2], ttype, 0, 2 * block_bytes as usize)
            .parse()
            .unwrap();
        assert_eq!(whole.tensor("w").unwrap().size, 2 * block_bytes);
        for ne0 in [block - 1, block / 2, block + 1, 3 * block / 2] {
            let msg =
                format!("first dimension {ne0} is not a multiple of the {name} block size {block}");
            assert_err(
                &one_tensor(&[ne0, 2], ttype, 0, 4096),
                &["tensor #0 \"w\"", &msg],
            );
            let mut w = GgufWriter::new();
            let refused = w
                .add_tensor("w", vec![ne0, 2], ttype, vec![0; 4096])
                .unwrap_err();
            assert!(refused.to_string().contains(&msg), "{refused}");
        }
    }
}

#[test]
fn dimensions_are_at_most_four_nonzero_and_their_product_fits() {
    for n_dims in [5, 64, u32::MAX] {
        let raw = Raw::header(3, 1, 0).str("w").u32(n_dims).zeros(64);
        assert_err(
            &raw,
            &[
                "tensor #0 \"w\"",
                &format!("{n_dims} dimensions, ggml allows at most 4"),
            ],
        );
    }
    for dims in [&[0][..], &[4, 0], &[0, u64::MAX], &[1, 1, 1, 0]] {
        let d = dims.iter().position(|&n| n == 0).unwrap();
        assert_err(
            &one_tensor(dims, F32, 0, 64),
            &["\"w\"", &format!("dimension {d} is 0")],
        );
    }
    let big = 1u64 << 32;
    for dims in [&[big, big, big][..], &[u64::MAX, 2], &[1 << 63]] {
        assert_err(
            &one_tensor(dims, F32, 0, 64),
            &["\"w\"", "more than 2^63 - 1 elements"],
        );
    }
    // 2^62 elements fit ggml's count; 2^65 bytes do not fit 64 bits.
    const F64: u32 = 28;
    assert_err(
        &one_tensor(&[1 << 62], F64, 0, 64),
        &["\"w\"", "the byte size overflows 64 bits"],
    );
    // 2^62 bytes fit 64 bits; not this file.
    assert_err(
        &one_tensor(&[1 << 30, 1 << 30], F32, 0, 64),
        &["\"w\"", "past the end"],
    );
    // No dimensions: a scalar, one element.
    let scalar = one_tensor(&[], F32, 0, 4).parse().unwrap();
    assert_eq!(scalar.tensor("w").unwrap().size, 4);
}

#[test]
fn tensor_data_must_lie_in_the_file_aligned_and_apart() {
    let past = ["tensor \"w\"", "past the end of the file"];
    assert_err(&one_tensor(&[8], F32, 0, 31), &past);
    assert_err(&one_tensor(&[8], F32, 32, 32), &past);
    assert_err(&one_tensor(&[8], F32, u64::MAX - 31, 32), &past);
    one_tensor(&[8], F32, 0, 32).parse().unwrap();
    assert_err(
        &one_tensor(&[8], F32, 4, 64),
        &["\"w\"", "offset 4 is not a multiple of the alignment 32"],
    );
    let aligned_8 = |offset| {
        let a = Raw::header(3, 1, 1).kv("general.alignment", T_U32, &8u32.to_le_bytes());
        a.tensor("w", &[8], F32, offset).pad(8).zeros(64)
    };
    assert_eq!(aligned_8(8).parse().unwrap().alignment(), 8);
    assert_err(
        &aligned_8(4),
        &["offset 4 is not a multiple of the alignment 8"],
    );
    for (offset_b, ok) in [(32, false), (0, false), (64, true)] {
        let raw = Raw::header(3, 2, 0)
            .tensor("a", &[16], F32, 0)
            .tensor("b", &[8], F32, offset_b)
            .pad(32)
            .zeros(96);
        match ok {
            true => assert_eq!(raw.parse().unwrap().tensors().len(), 2),
            false => assert_err(&raw, &["tensors \"a\" and \"b\" overlap"]),
        }
    }
    let twice = Raw::header(3, 2, 0)
        .tensor("w", &[8], F32, 0)
        .tensor("w", &[8], F32, 32)
        .pad(32)
        .zeros(64);
    assert_err(&twice, &["tensor \"w\" appears twice"]);
}

#[test]
fn a_forged_tensor_info_reads_nothing() {
    let f = small_raw().parse().unwrap();
    let forged = TensorInfo {
        size: 1 << 40,
        ..f.tensor("b").unwrap().clone()
    };
    let m = f.read_tensor(&forged).unwrap_err().to_string();
    assert!(m.contains("has no tensor \"b\""), "{m}");
}

#[test]
fn bad_metadata_values_are_named() {
    let u32v = |v: u32| v.to_le_bytes();
    let dup = Raw::header(3, 0, 2).kv("k", T_U8, &[1]).kv("k", T_U8, &[2]);
    assert_err(&dup, &["metadata key #1 \"k\": the key appears twice"]);
    assert_err(
        &Raw::header(3, 0, 1).kv("k", T_BOOL, &[2]).zeros(16),
        &["\"k\"", "bool byte is 2"],
    );
    let bools = Raw::default().u32(T_BOOL).u64(2).bytes(&[1, 7]);
    assert_err(
        &Raw::header(3, 0, 1).kv("k", T_ARRAY, &bools.0),
        &["\"k\": element 1", "bool byte is 7"],
    );
    let bad_key = Raw::header(3, 0, 1)
        .u64(2)
        .bytes(&[b'a', 0xff])
        .u32(T_U8)
        .bytes(&[0]);
    assert_err(
        &bad_key,
        &["metadata key #0", "not UTF-8 (invalid byte at offset 1"],
    );
    let bad_name = Raw::header(3, 1, 0)
        .u64(1)
        .bytes(&[0xc3])
        .u32(1)
        .u64(8)
        .u32(F32)
        .u64(0)
        .zeros(64);
    assert_err(&bad_name, &["tensor #0: name", "not UTF-8"]);
    for (ty, value) in [
        (T_U32, &u32v(0)[..]),
        (T_U32, &u32v(3)),
        (T_U32, &u32v(48)),
        (T_I32, &u32v(u32::MAX)),
    ] {
        let raw = Raw::header(3, 0, 1).kv("general.alignment", ty, value);
        assert_err(&raw, &["\"general.alignment\"", "is not a power of two"]);
    }
    let raw = Raw::header(3, 0, 1).kv("general.alignment", T_STR, &s("32"));
    assert_err(
        &raw,
        &["\"general.alignment\": a string is not a power of two"],
    );
}

/// An array nested `depth` deep (1: an array of u8) holding one 7.
fn nested(depth: usize) -> Vec<u8> {
    let outer = (1..depth).fold(Raw::default(), |r, _| r.u32(T_ARRAY).u64(1));
    outer.u32(T_U8).u64(1).bytes(&[7]).0
}

#[test]
fn arrays_nest_at_most_max_array_depth() {
    let raw = |depth| Raw::header(3, 0, 1).kv("k", T_ARRAY, &nested(depth));
    match raw(MAX_ARRAY_DEPTH).parse().unwrap().get("k") {
        Some(Value::Array(a)) => assert_eq!(a.depth(), MAX_ARRAY_DEPTH),
        other => panic!("{other:?}"),
    }
    assert_err(
        &raw(MAX_ARRAY_DEPTH + 1),
        &["\"k\"", "arrays nested deeper than 8"],
    );
    assert_err(&raw(10_000), &["arrays nested deeper than 8"]);
}

/// Parses `bytes`; on success every tensor must be readable (the bounds were checked) and every
/// value describable.
fn parse_and_walk(bytes: Vec<u8>) {
    if let Ok(f) = GgufFile::from_bytes("fuzzed.gguf", bytes) {
        for (_, v) in f.metadata() {
            let _ = v.describe();
        }
        for t in f.tensors() {
            assert_eq!(f.read_tensor(t).unwrap().len() as u64, t.size);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// A few bytes changed anywhere in a valid file: an error or a file whose tensors all read.
    #[test]
    fn changed_bytes_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), every in any::<bool>()) {
        let mut bytes = if every { every_bytes() } else { small_raw().0 };
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        parse_and_walk(bytes);
    }
}

/// A GPT-2 of one layer (C = 8, context 4, tied head) with a byte-level BPE vocabulary of the 256
/// bytes, "ab" and "abc": about the smallest file the model loader accepts, as a fuzzing seed.
fn tiny_gpt2() -> GgufWriter {
    tiny_gpt2_with(&[])
}

/// [`tiny_gpt2`] with some metadata values replaced.
fn tiny_gpt2_with(replaced: &[(&str, Value)]) -> GgufWriter {
    use scratchllm_tokenizer::bytes_unicode;
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bytes_unicode::encode(&[b])).collect();
    tokens.extend(["ab".to_string(), "abc".to_string()]);
    let (c, ff, ctx, vocab) = (8, 32, 4, tokens.len() as u64);
    let strs = |v: &[&str]| Value::Array(Array::Str(v.iter().map(|s| s.to_string()).collect()));
    let metadata = [
        ("general.architecture", Value::Str("gpt2".into())),
        ("gpt2.context_length", Value::U32(ctx as u32)),
        ("gpt2.embedding_length", Value::U32(c as u32)),
        ("gpt2.block_count", Value::U32(1)),
        ("gpt2.feed_forward_length", Value::U32(ff as u32)),
        ("gpt2.attention.head_count", Value::U32(2)),
        ("gpt2.attention.layer_norm_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("gpt-2".into())),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![1; vocab as usize])),
        ),
        ("tokenizer.ggml.tokens", Value::Array(Array::Str(tokens))),
        ("tokenizer.ggml.merges", strs(&["a b", "ab c"])),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        let v = replaced
            .iter()
            .find(|(r, _)| *r == k)
            .map_or(v, |(_, r)| r.clone());
        w.add(k, v).unwrap();
    }
    // f16 bits 0x2c00 + k: small positive normal numbers.
    let embd: Vec<u8> = (0..c * vocab)
        .flat_map(|j| (0x2c00u16 + (j % 256) as u16).to_le_bytes())
        .collect();
    w.add_tensor("token_embd.weight", vec![c, vocab], F16, embd)
        .unwrap();
    let tensors: [(&str, &[u64]); 15] = [
        ("position_embd.weight", &[c, ctx]),
        ("output_norm.weight", &[c]),
        ("output_norm.bias", &[c]),
        ("blk.0.attn_norm.weight", &[c]),
        ("blk.0.attn_norm.bias", &[c]),
        ("blk.0.attn_qkv.weight", &[c, 3 * c]),
        ("blk.0.attn_qkv.bias", &[3 * c]),
        ("blk.0.attn_output.weight", &[c, c]),
        ("blk.0.attn_output.bias", &[c]),
        ("blk.0.ffn_norm.weight", &[c]),
        ("blk.0.ffn_norm.bias", &[c]),
        ("blk.0.ffn_up.weight", &[c, ff]),
        ("blk.0.ffn_up.bias", &[ff]),
        ("blk.0.ffn_down.weight", &[ff, c]),
        ("blk.0.ffn_down.bias", &[c]),
    ];
    for (i, (name, dims)) in tensors.into_iter().enumerate() {
        let n: u64 = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|j| i as f32 * 0.01 + j as f32 * 1e-3).collect();
        w.add_tensor(name, dims.to_vec(), F32, f32s(&values))
            .unwrap();
    }
    w
}

#[test]
fn a_tiny_gpt2_file_loads_as_a_model() {
    use scratchllm_model::modeldir::gguf::load_gguf;
    use scratchllm_tokenizer::SpecialMode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_gpt2().write(&path).unwrap();
    let files = load_gguf(&path, &candle_core::Device::Cpu).unwrap();
    let cfg = &files.config;
    assert_eq!(
        (cfg.vocab_size, cfg.context_length, cfg.emb_dim),
        (258, 4, 8)
    );
    assert_eq!(
        (cfg.n_heads, cfg.n_layers, cfg.tie_embeddings),
        (2, 1, true)
    );
    assert_eq!(
        files.tokenizer.encode("abc", SpecialMode::Forbid).unwrap(),
        [257]
    );
    // The fused qkv bias (0.06 + j / 1000) split in three: the key's part starts at j = 8.
    let key_bias = &files.weights.tensors()["trf_blocks.0.att.W_key.bias"];
    let key_bias: Vec<f32> = key_bias
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!((key_bias[0] - 0.068).abs() < 1e-6, "{key_bias:?}");
}

#[test]
fn model_sizes_from_metadata_are_checked_before_use() {
    // The fuzzer's out-of-memory input: a block count of 12,108,801 made the loader list that many
    // layers' tensors before finding the first missing; a huge embedding length overflowed.
    use scratchllm_model::modeldir::gguf::load_gguf;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "gpt2.block_count",
            Value::U32(12_108_801),
            "sizes beyond any supported model",
        ),
        (
            "gpt2.block_count",
            Value::U64(1 << 40),
            "sizes beyond any supported model",
        ),
        (
            "gpt2.embedding_length",
            Value::U64(1 << 62),
            "token_embd.weight's rows are 8 long",
        ),
        (
            "gpt2.context_length",
            Value::U64(u64::MAX),
            "sizes beyond any supported model",
        ),
        (
            "gpt2.attention.head_count",
            Value::U32(0),
            "every size must be positive",
        ),
        (
            "gpt2.attention.head_count",
            Value::U32(3),
            "not divisible by n_heads 3",
        ),
    ];
    for (i, (key, value, want)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.gguf"));
        tiny_gpt2_with(&[(key, value)]).write(&path).unwrap();
        let Err(err) = load_gguf(&path, &candle_core::Device::Cpu) else {
            panic!("{key}: loaded");
        };
        let err = err.to_string();
        assert!(err.contains(want) && err.contains("bad"), "{key}: {err}");
    }
}

/// Writes the fuzzing seeds (`fuzz/corpus/gguf`, git-ignored) for `cargo fuzz run gguf`:
/// `cargo test --workspace --test gguf_format -- --ignored write_fuzz_seed`.
#[test]
#[ignore = "writes the fuzzing seeds into fuzz/corpus/gguf"]
fn write_fuzz_seed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let mut aligned = GgufWriter::new();
    aligned.add("general.alignment", Value::U32(64)).unwrap();
    aligned
        .add_tensor("q", vec![32, 2], Q8_0, filler(68, 1))
        .unwrap();
    std::fs::write(dir.join("small.gguf"), small_raw().0).unwrap();
    std::fs::write(
        dir.join("nested.gguf"),
        Raw::header(3, 0, 1).kv("k", T_ARRAY, &nested(3)).0,
    )
    .unwrap();
    for (name, w) in [
        ("every.gguf", every_kind()),
        ("aligned64.gguf", aligned),
        ("tiny_gpt2.gguf", tiny_gpt2()),
    ] {
        w.write(&dir.join(name)).unwrap();
    }
}
