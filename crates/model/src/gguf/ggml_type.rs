//! The ggml tensor types a GGUF file can name: id, name, and how many elements a block holds in how
//! many bytes. Ids and sizes match `enum ggml_type` in llama.cpp's `ggml/include/ggml.h` and the
//! `static_assert`s on the block structs in `ggml/src/ggml-common.h`. The table only sizes tensors;
//! which types scratchllm can decode is the model loader's business.

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q6_K: u32 = 14;
pub const BF16: u32 = 30;

/// Elements per block of the k-quants and i-quants ("super-blocks").
const QK_K: u64 = 256;

/// (id, name, elements per block, bytes per block). Ids 4, 5 (Q4_2, Q4_3), 31–33 (Q4_0_4_4 ..) and
/// 36–38 (IQ4_NL_4_4 ..) were removed from ggml and may not appear in GGUF files. Q2_0 (42) is
/// left out because its block size differs between the sources we could check.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 2 + 16),
    (3, "Q4_1", 32, 2 + 2 + 16),
    (6, "Q5_0", 32, 2 + 4 + 16),
    (7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (8, "Q8_0", 32, 2 + 32),
    // Two f16 (d, s) then 32 int8: 36 bytes (gguf-py's table says 4 + 4 + 32, but ggml's struct wins).
    (9, "Q8_1", 32, 2 + 2 + 32),
    (10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
    (11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
    (12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    (13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
    (14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
    (15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    (16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    (17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
    (18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
    (19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    (20, "IQ4_NL", 32, 2 + 16),
    (21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    (22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    (23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", QK_K, 2 + 4 * 13),
    (35, "TQ2_0", QK_K, 2 + 64),
    (39, "MXFP4", 32, 1 + 16),
    (40, "NVFP4", 64, 4 + 32),
    (41, "Q1_0", 128, 2 + 16),
];

fn find(id: u32) -> Option<&'static (u32, &'static str, u64, u64)> {
    TYPES.iter().find(|t| t.0 == id)
}

/// ggml's name of type `id` ("Q4_K"), or None for an id ggml does not define.
pub fn type_name(id: u32) -> Option<&'static str> {
    find(id).map(|t| t.1)
}

/// (elements per block, bytes per block) of type `id`, or None for an id ggml does not define.
pub fn type_block(id: u32) -> Option<(u64, u64)> {
    find(id).map(|t| (t.2, t.3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml_block_structs() {
        // sizeof(block_q4_0) = 18, block_q8_0 = 34, block_q4_K = 144, block_q6_K = 210,
        // block_q8_1 = 36, block_q2_K = 84, block_iq4_xs = 136, block_tq1_0 = 54.
        assert_eq!(type_block(Q4_0), Some((32, 18)));
        assert_eq!(type_block(Q8_0), Some((32, 34)));
        assert_eq!(type_block(Q4_K), Some((256, 144)));
        assert_eq!(type_block(Q6_K), Some((256, 210)));
        assert_eq!(type_block(9), Some((32, 36)));
        assert_eq!(type_block(10), Some((256, 84)));
        assert_eq!(type_block(23), Some((256, 136)));
        assert_eq!(type_block(34), Some((256, 54)));
        assert_eq!(type_block(BF16), Some((1, 2)));
        assert_eq!(type_name(F16), Some("F16"));
        assert_eq!(type_name(4), None);
        assert_eq!(type_name(42), None);
    }

    #[test]
    fn ids_are_unique() {
        for (i, a) in TYPES.iter().enumerate() {
            assert!(
                TYPES[i + 1..].iter().all(|b| b.0 != a.0 && b.1 != a.1),
                "{}",
                a.1
            );
        }
    }
}
